#[grainwire::grain]
trait Player {
    async fn join<T>(&mut self, name: T) -> u32;
}

fn main() {}
