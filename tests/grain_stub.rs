//! A generated reference tested without a network: an `Invoker` answers its calls, as a game's
//! unit tests would use one to stand in for the server.

use std::sync::{Arc, Mutex};

use grainwire::CallError;
use grainwire::grain::{Answer, Invocation, Invoked, Invoker, stub};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// Not enough money.
pub struct Broke {
    /// How much was missing.
    pub short: u32,
}

#[grainwire::grain]
trait Bank {
    async fn deposit(&mut self, amount: u32) -> u32;
    async fn withdraw(&mut self, amount: u32) -> Result<u32, Broke>;
    #[one_way]
    async fn audit(&mut self, note: String);
}

/// The game code under test: pays `price` if it can, depositing a bonus first.
async fn buy(bank: &BankRef, price: u32) -> Result<u32, String> {
    bank.audit(format!("buy {price}")).await.map_err(|e| e.to_string())?;
    bank.deposit(5).await.map_err(|e| e.to_string())?;
    match bank.withdraw(price).await {
        Ok(left) => Ok(left),
        Err(CallError::Application(Broke { short })) => Err(format!("short by {short}")),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Default)]
struct FakeBank {
    balance: Mutex<u32>,
    calls: Mutex<Vec<String>>,
}

impl Invoker for FakeBank {
    fn invoke(&self, call: Invocation) -> Invoked {
        assert_eq!(call.grain.key, grainwire::GrainKey::from("ann"));
        self.calls.lock().unwrap().push(call.method.name.to_string());
        let answer = match call.method.name {
            "deposit" => call.args::<(u32,)>().and_then(|(n,)| {
                let mut b = self.balance.lock().unwrap();
                *b += n;
                Answer::ok(&*b)
            }),
            "withdraw" => call.args::<(u32,)>().and_then(|(n,)| {
                let mut b = self.balance.lock().unwrap();
                match b.checked_sub(n) {
                    Some(left) => {
                        *b = left;
                        Answer::ok(&left)
                    }
                    None => Answer::app_error(&Broke { short: n - *b }),
                }
            }),
            "audit" => call.args::<(String,)>().and_then(|(note,)| {
                self.calls.lock().unwrap().push(note);
                Answer::ok(&())
            }),
            _ => Err(CallError::UnknownMethod),
        };
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn game_code_runs_against_a_stubbed_grain() {
    let fake = Arc::new(FakeBank::default());
    let bank: BankRef = stub(fake.clone(), "ann");
    assert_eq!(bank.id().key, grainwire::GrainKey::from("ann"));
    assert_eq!(buy(&bank, 3).await, Ok(2), "5 deposited, 3 paid");
    assert_eq!(buy(&bank, 100).await, Err("short by 93".to_string()), "an application error");
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        ["audit", "buy 3", "deposit", "withdraw", "audit", "buy 100", "deposit", "withdraw"]
    );
}

/// A stub that fails calls as the network or a server would: the reference returns the error.
#[tokio::test]
async fn a_stub_can_fail_calls_with_any_call_error() {
    struct Down;
    impl Invoker for Down {
        fn invoke(&self, _call: Invocation) -> Invoked {
            Box::pin(async { Err(CallError::Timeout) })
        }
    }
    let bank: BankRef = stub(Arc::new(Down), "ann");
    assert!(matches!(bank.deposit(1).await, Err(CallError::Timeout)));
    assert!(matches!(bank.withdraw(1).await, Err(CallError::Timeout)));
    assert!(matches!(bank.audit("x".into()).await, Err(CallError::Timeout)));
}
