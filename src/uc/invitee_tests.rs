//! The shell's per-invitee policy ([`InviteePolicy`]): what the escalation core asks before
//! dialling an invitee's number or ringing them with video, and what it journals.

use super::*;
use crate::journal::JournalConfig;
use crate::sip::TrunkConfig;
use confer_signalling::directory::PhoneNumber;

fn policy(toml_text: &str) -> Policy {
    let config: PolicyConfig = toml::from_str(toml_text).expect("a policy");
    Policy::new(config).expect("a valid policy")
}

/// One trunk that carries North American numbers.
fn trunks() -> Trunks {
    let trunk: TrunkConfig =
        toml::from_str("name = \"carrier\"\naddress = \"127.0.0.1:5099\"\n").expect("a trunk");
    Trunks::new(&[trunk], "1", &["+1".into()], &[]).expect("trunks")
}

/// What an [`InviteePolicy`] borrows: a policy, the trunks, a journal in memory.
struct Parts {
    policy: Policy,
    trunks: Trunks,
    journal: Journal,
}

impl Parts {
    async fn new(policy_toml: &str) -> Parts {
        Parts {
            policy: policy(policy_toml),
            trunks: trunks(),
            journal: Journal::open(&JournalConfig::default())
                .await
                .expect("a journal in memory"),
        }
    }

    fn invitee<'a>(&'a self, requester: Option<&'a str>, at: Timestamp) -> InviteePolicy<'a> {
        InviteePolicy {
            policy: &self.policy,
            trunks: &self.trunks,
            requester,
            journal: &self.journal,
            at,
        }
    }
}

fn conversation() -> ConversationId {
    ConversationId::new("chat-1").expect("an id")
}

fn user(id: &str) -> Participant {
    Participant::User(UserId::new(id).expect("an id"))
}

fn number(n: &str) -> PhoneNumber {
    PhoneNumber::parse(n).expect("E.164")
}

/// The events journaled so far.
async fn journaled(j: &Journal) -> Vec<Arc<crate::journal::Event>> {
    let mut sub = j.subscribe(Some(0)).expect("from the start");
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        out.push(e);
    }
    out
}

const POLICY: &str = r#"
[groups.default]
dial_out = { only_prefixes = ["+1"] }

[groups.interns]
escalate = ["voice", "dial_in"]
blocked = ["video", "dial_out"]

[members]
ivan = "interns"
"#;

#[tokio::test]
async fn a_number_the_invitees_group_may_dial_and_a_trunk_carries_is_allowed() {
    let parts = Parts::new(POLICY).await;
    let decide = parts.invitee(None, Timestamp(1));
    let d = decide.decide(&conversation(), &user("alice"), &number("+14155550100"));
    assert!(matches!(d, DialOutDecision::Allow), "{d:?}");
}

#[tokio::test]
async fn a_number_outside_the_groups_prefixes_is_denied_with_the_policys_reason() {
    let parts = Parts::new(POLICY).await;
    let decide = parts.invitee(None, Timestamp(1));
    let d = decide.decide(&conversation(), &user("alice"), &number("+442071234567"));
    let DialOutDecision::Deny { reason } = d else {
        panic!("allowed: {d:?}");
    };
    assert!(reason.contains("group default"), "{reason}");
    // A group that may not dial out at all is denied whatever the number.
    let d = decide.decide(&conversation(), &user("ivan"), &number("+14155550100"));
    assert!(matches!(d, DialOutDecision::Deny { .. }), "{d:?}");
}

#[tokio::test]
async fn an_outside_number_is_judged_by_the_requesters_group() {
    let parts = Parts::new(POLICY).await;
    let phone = Participant::Phone(number("+14155550100"));
    let by = |requester| parts.invitee(requester, Timestamp(1));
    let allowed = by(Some("alice")).decide(&conversation(), &phone, &number("+14155550100"));
    assert!(matches!(allowed, DialOutDecision::Allow), "{allowed:?}");
    let denied = by(Some("ivan")).decide(&conversation(), &phone, &number("+14155550100"));
    assert!(matches!(denied, DialOutDecision::Deny { .. }), "{denied:?}");
}

#[tokio::test]
async fn a_number_no_trunk_may_carry_is_denied_with_the_dial_plans_reason() {
    // The policy allows everything; the trunks' own allow list does not.
    let parts = Parts::new("").await;
    let decide = parts.invitee(None, Timestamp(1));
    let d = decide.decide(&conversation(), &user("alice"), &number("+33123456789"));
    let DialOutDecision::Deny { reason } = d else {
        panic!("allowed: {d:?}");
    };
    assert!(
        !reason.contains("group"),
        "the trunks refused, not the policy: {reason}"
    );
    assert!(
        reason.contains("+33") || reason.contains("allow"),
        "{reason}"
    );
}

#[tokio::test]
async fn video_blocked_for_a_group_is_refused_and_the_refusal_journaled_with_its_rule() {
    let parts = Parts::new(POLICY).await;
    let decide = parts.invitee(None, Timestamp(7));
    assert!(decide.video_allowed(&user("alice")));
    assert!(decide.video_allowed(&Participant::Phone(number("+14155550100"))));
    assert!(
        journaled(&parts.journal).await.is_empty(),
        "nothing refused yet"
    );
    assert!(!decide.video_allowed(&user("ivan")));
    let events = journaled(&parts.journal).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e.source.as_str(), e.kind.as_str()), ("policy", "refused"));
    assert_eq!(e.at, Timestamp(7));
    assert_eq!(e.body["what"], "video", "{:?}", e.body);
    assert_eq!(e.body["who"], "ivan", "{:?}", e.body);
    assert_eq!(e.body["rule"], "groups.interns.blocked", "{:?}", e.body);
}
