// `cast` and `on_session_ended` belong to the reference and the hooks.
#[grainwire::grain]
trait Player {
    async fn cast(&self) -> u32;
    async fn on_session_ended(&mut self);
}

fn main() {}
