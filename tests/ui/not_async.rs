#[grainwire::grain]
trait Player {
    fn join(&mut self, name: String) -> u32;
}

fn main() {}
