//! Engine tests: the state machine fed orchestrator answers, and the engine over an in-memory actor store.

use super::instance::Effect;
use super::*;
use dapr_durabletask_proto as pb;
use pb::workflow_action::WorkflowActionType as A;

fn action(id: i32, kind: A) -> pb::WorkflowAction {
    pb::WorkflowAction {
        id,
        router: None,
        workflow_action_type: Some(kind),
    }
}

fn answer(actions: Vec<pb::WorkflowAction>) -> pb::WorkflowResponse {
    pb::WorkflowResponse {
        actions,
        ..Default::default()
    }
}

fn complete(status: Status, result: Option<&str>) -> A {
    A::CompleteWorkflow(pb::CompleteWorkflowAction {
        workflow_status: status as i32,
        result: result.map(str::to_owned),
        ..Default::default()
    })
}

fn kinds(raw: &[Vec<u8>]) -> Vec<&'static str> {
    instance::decode_all(raw)
        .into_iter()
        .map(|e| match e.event_type.unwrap() {
            EventType::ExecutionStarted(_) => "ExecutionStarted",
            EventType::ExecutionCompleted(_) => "ExecutionCompleted",
            EventType::ExecutionTerminated(_) => "ExecutionTerminated",
            EventType::TaskScheduled(_) => "TaskScheduled",
            EventType::TaskCompleted(_) => "TaskCompleted",
            EventType::TaskFailed(_) => "TaskFailed",
            EventType::TimerCreated(_) => "TimerCreated",
            EventType::TimerFired(_) => "TimerFired",
            EventType::WorkflowStarted(_) => "WorkflowStarted",
            EventType::WorkflowCompleted(_) => "WorkflowCompleted",
            EventType::EventRaised(_) => "EventRaised",
            _ => "other",
        })
        .collect()
}

#[test]
fn a_scheduled_activity_is_recorded_and_dispatched_then_its_result_completes_the_workflow() {
    let mut inst = Instance::new("i1", "wf", Some("\"in\"".into()), None, "app");
    assert_eq!(inst.status(), Status::Pending);
    assert!(inst.runnable());
    let (req, taken) = inst.next_step();
    assert_eq!(taken, 1);
    assert!(req.past_events.is_empty());
    assert_eq!(
        kinds(&req.new_events.iter().map(instance::encode).collect::<Vec<_>>()),
        ["WorkflowStarted", "ExecutionStarted"]
    );

    let schedule = A::ScheduleTask(pb::ScheduleTaskAction {
        name: "act".into(),
        input: Some("1".into()),
        ..Default::default()
    });
    let effects = inst.apply(req.new_events, taken, answer(vec![action(0, schedule)]));
    assert_eq!(inst.status(), Status::Running);
    assert!(inst.inbox.is_empty());
    assert_eq!(
        kinds(&inst.history),
        [
            "WorkflowStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "WorkflowCompleted"
        ]
    );
    let [Effect::Activity(a)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!((a.name.as_str(), a.task_id, a.input.as_deref()), ("act", 0, Some("1")));
    assert!(inst.awaits_task(0));
    assert!(!inst.runnable());

    inst.push(&event(EventType::TaskCompleted(pb::TaskCompletedEvent {
        task_scheduled_id: 0,
        result: Some("2".into()),
        ..Default::default()
    })));
    assert!(!inst.awaits_task(0), "an answered task is no longer awaited");
    let (req, taken) = inst.next_step();
    assert_eq!(req.past_events.len(), 3, "the worker is not sent WorkflowCompleted");
    let effects = inst.apply(
        req.new_events,
        taken,
        answer(vec![action(1, complete(Status::Completed, Some("2")))]),
    );
    assert!(effects.is_empty());
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(inst.output.as_deref(), Some("2"));
    assert!(inst.is_terminal() && !inst.runnable());
    assert_eq!(kinds(&inst.history).last(), Some(&"ExecutionCompleted"));
}

#[test]
fn a_failed_workflow_keeps_its_failure_details_and_a_child_tells_its_parent() {
    let mut inst = Instance::new("child", "wf", None, Some(("parent".into(), 7)), "app");
    let (req, taken) = inst.next_step();
    let failure = pb::TaskFailureDetails {
        error_type: "ValueError".into(),
        error_message: "boom".into(),
        ..Default::default()
    };
    let effects = inst.apply(
        req.new_events,
        taken,
        answer(vec![action(
            -1,
            A::CompleteWorkflow(pb::CompleteWorkflowAction {
                workflow_status: Status::Failed as i32,
                failure_details: Some(failure.clone()),
                ..Default::default()
            }),
        )]),
    );
    assert_eq!(inst.status(), Status::Failed);
    assert_eq!(inst.failure_details(), Some(failure.clone()));
    let [Effect::NotifyParent { parent, event }] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(parent, "parent");
    let Some(EventType::ChildWorkflowInstanceFailed(f)) = &event.event_type else {
        panic!()
    };
    assert_eq!((f.task_scheduled_id, f.failure_details.clone()), (7, Some(failure)));
}

#[test]
fn timers_and_pending_work_are_found_again_from_the_history() {
    let mut inst = Instance::new("t", "wf", None, None, "app");
    let (req, taken) = inst.next_step();
    let fire_at = instance::timestamp(now_ms() + 60_000);
    inst.apply(
        req.new_events,
        taken,
        answer(vec![
            action(
                0,
                A::CreateTimer(pb::CreateTimerAction {
                    fire_at: Some(fire_at),
                    ..Default::default()
                }),
            ),
            action(
                1,
                A::ScheduleTask(pb::ScheduleTaskAction {
                    name: "a".into(),
                    ..Default::default()
                }),
            ),
        ]),
    );
    let out = inst.outstanding();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(inst.awaits_timer(0) && inst.awaits_task(1));
    inst.push(&event(EventType::TimerFired(pb::TimerFiredEvent {
        fire_at: Some(fire_at),
        timer_id: 0,
    })));
    assert!(!inst.awaits_timer(0));
    assert_eq!(inst.outstanding().len(), 1);
}

#[test]
fn terminate_ends_the_instance_without_the_orchestrator_and_continue_as_new_starts_over() {
    let mut inst = Instance::new("x", "wf", None, None, "app");
    inst.terminate(Some("\"bye\"".into()));
    assert_eq!(inst.status(), Status::Terminated);
    assert_eq!(inst.output.as_deref(), Some("\"bye\""));
    assert!(inst.terminate(None).is_empty(), "terminating twice changes nothing");

    let mut inst = Instance::new("c", "wf", Some("1".into()), None, "app");
    let (req, taken) = inst.next_step();
    inst.apply(
        req.new_events,
        taken,
        answer(vec![action(0, complete(Status::ContinuedAsNew, Some("2")))]),
    );
    assert_eq!(inst.status(), Status::Running);
    assert!(inst.history.is_empty());
    assert_eq!(inst.input.as_deref(), Some("2"));
    assert_eq!(kinds(&inst.inbox), ["ExecutionStarted"]);
}

#[test]
fn instance_ids_follow_dapr_rules() {
    assert!(check_instance_id("order-1_a").is_ok());
    assert!(check_instance_id("").is_err());
    assert!(check_instance_id("a/b").is_err());
    assert!(check_instance_id("a||b").is_err());
}
