// Every problem in a trait is reported at once, not only the first.
#[grainwire::grain(versoin = 2)]
trait Player {
    fn not_async(&mut self) -> u32;
    async fn borrowed(&mut self, name: &str) -> u32;
    #[retry]
    async fn unknown_attribute(&mut self) -> u32;
    async fn id(&self) -> u64;
}

fn main() {}
