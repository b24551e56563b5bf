// An exactly-once call's answer is recorded with the grain's state: it needs an answer, and a
// reliable, ordered call.
#[grainwire::grain]
trait Shop {
    #[exactly_once]
    #[one_way]
    async fn buy(&mut self, item: u32);
}

fn main() {}
