#[grainwire::grain]
trait Player {
    #[retry]
    async fn join(&mut self) -> u32;
}

fn main() {}
