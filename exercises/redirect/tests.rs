//! The story, checked.

use std::sync::Arc;

use registry::MemoryRegistry;

use crate::story::{Answer, LOGIN_TARGETS, demo};

/// How many of [`LOGIN_TARGETS`] are fair: the first ones.
pub const FAIR: usize = 3;

/// Status and `Location` of an answer, the part a browser acts on.
fn seen(answer: &Answer) -> (u16, Option<&str>) {
    (answer.status.as_u16(), answer.location.as_deref())
}

#[tokio::test]
async fn the_client_follows_each_redirect_as_its_status_says() {
    let story = demo(Arc::new(MemoryRegistry::new()), None).await.unwrap();
    let visits: Vec<_> = story
        .visits
        .iter()
        .map(|(first, then)| {
            (seen(first), then.as_ref().map(|a| (a.status.as_u16(), a.body.as_str())))
        })
        .collect();
    assert_eq!(
        visits,
        [
            ((302, Some("/links/pages/intro")), Some((200, "page intro"))),
            ((301, Some("/links/pages/guide-v2")), Some((200, "page guide-v2"))),
            ((302, Some("https://docs.example.org/start")), None),
            // 307 and 308 keep the POST and its body; 303 turns it into a GET.
            ((307, Some("/links/forms/new")), Some((200, "form received: a=1"))),
            ((308, Some("/links/forms/new")), Some((200, "form received: a=1"))),
            ((303, Some("/links/pages/thanks")), Some((200, "page thanks"))),
        ]
    );
}

#[tokio::test]
async fn only_the_fair_login_targets_redirect_and_the_next_flag_is_tried_last() {
    let story = demo(Arc::new(MemoryRegistry::new()), Some("//x.example")).await.unwrap();
    let (fair, attacks) = story.attempts.split_at(FAIR);
    assert_eq!(seen(&fair[0].1), (302, Some("/links/pages/account")));
    assert_eq!(seen(&fair[1].1), (302, Some("https://docs.example.org/start")));
    assert_eq!(seen(&fair[2].1), (302, Some("/links/pages/%E6%97%A5%E6%9C%AC")));
    assert_eq!(attacks.len(), LOGIN_TARGETS.len() - FAIR + 1);
    for (target, answer) in attacks {
        assert_eq!(seen(answer), (400, None), "{target:?}");
        assert!(answer.body.starts_with("refused redirect: "), "{target:?}: {}", answer.body);
    }
    let (target, answer) = attacks.last().unwrap();
    assert_eq!(target, "//x.example");
    assert_eq!(
        answer.body,
        "refused redirect: scheme-relative URL (//host) points at another host"
    );
}
