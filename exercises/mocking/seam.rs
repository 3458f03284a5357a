//! The code under test and the one seam it needs: a small trait, which mockall mocks.

use tonic::{Code, Status};

/// What the desk needs from the Greeter service, in its own words: one method, not the
/// whole generated client. A small trait is easy to mock and easy to read in a test.
#[mockall::automock]
pub trait Greet {
    async fn say_hello(&self, name: &str) -> Result<String, Status>;
}

/// Greets a list of guests through whatever [`Greet`] it is given.
pub struct WelcomeDesk<G> {
    pub greeter: G,
}

/// What the desk did: who was greeted (with the reply), who was not (with the reason).
#[derive(Debug, Default, PartialEq)]
pub struct Welcome {
    pub greeted: Vec<String>,
    pub failed: Vec<(String, Code)>,
    pub skipped: usize,
}

impl<G: Greet> WelcomeDesk<G> {
    /// The rules the tests pin down:
    /// - a blank name is skipped, and the service is not called for it;
    /// - `Unavailable` is retried once (a node may have just restarted);
    /// - any other error is recorded for that guest, and the others are still greeted.
    pub async fn welcome(&self, guests: &[String]) -> Welcome {
        let mut welcome = Welcome::default();
        for guest in guests {
            let guest = guest.trim();
            if guest.is_empty() {
                welcome.skipped += 1;
                continue;
            }
            // EXERCISE: ask again, once, when the answer is `Unavailable`
            // Check it with `scripts/exercise.sh mocking`; `scripts/exercise.sh mocking hint` helps.
            let reply = self.greeter.say_hello(guest).await;
            // END OF EXERCISE
            match reply {
                Ok(reply) => welcome.greeted.push(reply),
                Err(status) => welcome.failed.push((guest.to_owned(), status.code())),
            }
        }
        welcome
    }
}
