// An interleaving method runs beside other calls of its grain: it cannot take `&mut self`.
#[grainwire::grain]
trait Desk {
    #[interleave]
    async fn bump(&mut self) -> u32;
}

fn main() {}
