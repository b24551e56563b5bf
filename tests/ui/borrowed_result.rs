#[grainwire::grain]
trait Player {
    async fn names(&self) -> Vec<&'static str>;
}

fn main() {}
