//! The Jobs API over a real store: Dapr's checks and codes, overwrite, persistence, claiming.

use super::store::{Finish, JobStore};
use super::*;

fn job(name: &str) -> Job {
    Job {
        name: name.into(),
        schedule: Some("@every 1h".into()),
        repeats: None,
        due_time: None,
        ttl: None,
        data: Some(JobData {
            type_url: "t".into(),
            value: b"{}".to_vec(),
        }),
        failure_policy: FailurePolicy::default(),
    }
}

fn api() -> JobsApi {
    JobsApi::new(None, "default", "app")
}

#[tokio::test]
async fn schedule_get_delete() {
    let a = api();
    let mut j = job("R2-D2");
    a.schedule(Some(j.clone()), false).await.unwrap();
    assert_eq!(a.get("R2-D2").await.unwrap(), j);
    // Without overwrite an existing job stays as it was: 409 / ALREADY_EXISTS.
    j.schedule = Some("@daily".into());
    let e = a.schedule(Some(j.clone()), false).await.unwrap_err();
    assert_eq!(
        (e.status, e.grpc, e.code),
        (409, Code::AlreadyExists, "DAPR_SCHEDULER_SCHEDULE_JOB")
    );
    assert!(
        e.message.contains("job already exists: 'app||default||app||R2-D2'"),
        "{}",
        e.message
    );
    assert_eq!(a.get("R2-D2").await.unwrap().schedule.as_deref(), Some("@every 1h"));
    a.schedule(Some(j.clone()), true).await.unwrap();
    assert_eq!(a.get("R2-D2").await.unwrap().schedule.as_deref(), Some("@daily"));
    a.delete("R2-D2").await.unwrap();
    let e = a.get("R2-D2").await.unwrap_err();
    assert_eq!(
        (e.status, e.grpc, e.code),
        (500, Code::Internal, "DAPR_SCHEDULER_GET_JOB")
    );
    assert_eq!(
        e.message,
        "failed to get job due to: rpc error: code = NotFound desc = job not found: R2-D2"
    );
    // Deleting what is not there succeeds, as in Dapr.
    a.delete("R2-D2").await.unwrap();
}

#[tokio::test]
async fn daprs_checks_in_daprs_order() {
    let a = api();
    let e = a.schedule(None, false).await.unwrap_err();
    assert_eq!(
        (e.status, e.code, e.message.as_str()),
        (400, "DAPR_SCHEDULER_EMPTY", "Job is empty")
    );
    let e = a.schedule(Some(job("")), false).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        ("DAPR_SCHEDULER_JOB_NAME_EMPTY", "Name is empty")
    );
    let mut j = job("x");
    j.schedule = None;
    let e = a.schedule(Some(j), false).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        ("DAPR_SCHEDULER_SCHEDULE_EMPTY", "Schedule is empty")
    );
    for bad in [
        "bad/name",
        "bad#name",
        "bad?name",
        "bad\nname",
        "bad\\name",
        &"a".repeat(600),
        "a||",
        "é",
    ] {
        let e = a.schedule(Some(job(bad)), false).await.unwrap_err();
        assert_eq!(
            (e.status, e.grpc, e.code),
            (400, Code::InvalidArgument, "DAPR_SCHEDULER_SCHEDULE_JOB"),
            "{bad:?}"
        );
        assert!(e.message.contains("job name is invalid"), "{}", e.message);
    }
    let mut j = job("x");
    j.schedule = Some("* * * * *".into());
    let e = a.schedule(Some(j), false).await.unwrap_err();
    assert_eq!(e.status, 400);
    assert!(
        e.message.contains("job failed validation: expected exactly 6 fields"),
        "{}",
        e.message
    );
    let mut j = job("x");
    j.data = Some(JobData {
        type_url: String::new(),
        value: vec![b'a'; MAX_DATA_BYTES + 1],
    });
    assert_eq!(a.schedule(Some(j), false).await.unwrap_err().status, 400);
    assert_eq!(a.get("").await.unwrap_err().code, "DAPR_SCHEDULER_JOB_NAME_EMPTY");
    assert_eq!(a.delete("").await.unwrap_err().code, "DAPR_SCHEDULER_JOB_NAME_EMPTY");
    assert_eq!(a.get("a/b").await.unwrap_err().status, 400);
    // Names Dapr accepts: its sanitizer drops `_`, `:`, `-` and spaces, and case does not matter.
    for good in ["R2-D2", "prod_db:backup", "a.b", "with space", "x||y"] {
        a.schedule(Some(job(good)), false)
            .await
            .unwrap_or_else(|e| panic!("{good:?}: {e}"));
    }
}

#[tokio::test]
async fn list_and_delete_by_prefix() {
    let a = api();
    for n in ["a1", "a2", "b1"] {
        a.schedule(Some(job(n)), false).await.unwrap();
    }
    let names = |v: Vec<Job>| v.into_iter().map(|j| j.name).collect::<Vec<_>>();
    assert_eq!(names(a.list().await.unwrap()), ["a1", "a2", "b1"]);
    a.delete_prefix("a").await.unwrap();
    assert_eq!(names(a.list().await.unwrap()), ["b1"]);
    a.delete_prefix("").await.unwrap();
    assert!(a.list().await.unwrap().is_empty());
    assert_eq!(a.delete_prefix("a/").await.unwrap_err().status, 400);
}

#[tokio::test]
async fn jobs_persist_and_belong_to_their_app() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    JobsApi::new(Some(&path), "default", "app")
        .schedule(Some(job("kept")), false)
        .await
        .unwrap();
    // A new sidecar of the same app finds it; another app does not.
    assert_eq!(
        JobsApi::new(Some(&path), "default", "app")
            .get("kept")
            .await
            .unwrap()
            .name,
        "kept"
    );
    assert_eq!(
        JobsApi::new(Some(&path), "default", "other")
            .get("kept")
            .await
            .unwrap_err()
            .status,
        500
    );
    assert_eq!(
        JobsApi::new(Some(&path), "prod", "app")
            .get("kept")
            .await
            .unwrap_err()
            .status,
        500
    );
}

#[tokio::test]
async fn a_due_trigger_is_claimed_by_one_sidecar_and_advanced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let one = JobStore::open(Some(&path), "default", "app").unwrap();
    let two = JobStore::open(Some(&path), "default", "app").unwrap();
    let j = job("tick");
    let window = timing::Window {
        begin_ms: 1_000,
        begin_is_due: true,
        expiration_ms: None,
    };
    one.put(j, window, 1_000, false).await.unwrap();
    assert_eq!(one.next_wake().await.unwrap(), Some(1_000));
    assert!(one.claim_due(999, "one", 60_000, 10).await.unwrap().is_empty());
    let got = one.claim_due(1_000, "one", 60_000, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    // The other sidecar finds it leased.
    assert!(two.claim_due(2_000, "two", 60_000, 10).await.unwrap().is_empty());
    // Only the holder records the outcome.
    let s = &got[0];
    two.finish("tick", s.generation, "two", Finish::Retry { at_ms: 1, attempts: 9 })
        .await
        .unwrap();
    one.finish(
        "tick",
        s.generation,
        "one",
        Finish::Advance {
            count: 1,
            last_ms: 1_000,
            next_ms: Some(3_600_000),
        },
    )
    .await
    .unwrap();
    assert_eq!(one.next_wake().await.unwrap(), Some(3_600_000));
    let again = two.claim_due(3_600_000, "two", 3_700_000, 10).await.unwrap();
    assert_eq!((again.len(), again[0].count, again[0].attempts), (1, 1, 0));
    // An expired lease passes to another sidecar.
    let taken = one.claim_due(3_700_000, "one", 3_800_000, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    one.finish(
        "tick",
        taken[0].generation,
        "one",
        Finish::Advance {
            count: 2,
            last_ms: 3_600_000,
            next_ms: None,
        },
    )
    .await
    .unwrap();
    assert!(one.get("tick").await.unwrap().is_none());
}
