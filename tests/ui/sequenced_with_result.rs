// A sequenced update is one-way: latest wins, nobody waits for an answer.
#[grainwire::grain]
trait Avatar {
    #[sequenced]
    async fn position(&mut self, x: f32, y: f32) -> u32;
}

fn main() {}
