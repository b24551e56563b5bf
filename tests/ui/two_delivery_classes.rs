// A method has one delivery class.
#[grainwire::grain]
trait Avatar {
    #[unreliable]
    #[sequenced]
    async fn position(&mut self, x: f32, y: f32);
}

fn main() {}
