// The grain type an interface belongs to is named by a string.
#[grainwire::grain(grain_type = Player)]
trait Inventory {
    async fn items(&self) -> Vec<String>;
}

fn main() {}
