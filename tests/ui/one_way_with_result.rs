#[grainwire::grain]
trait Player {
    #[one_way]
    async fn ping(&mut self) -> u32;
}

fn main() {}
