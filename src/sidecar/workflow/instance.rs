//! One workflow instance as the engine keeps it — its history, the events waiting for the next orchestration
//! step (the inbox) and its status — and the pure state machine over it: what an orchestrator's actions do to
//! the history and which work (activities, timers, child workflows, events to others) they start.

use std::collections::HashSet;

use base64::Engine as _;
use dapr_durabletask_proto as pb;
use pb::history_event::EventType;
use pb::workflow_action::WorkflowActionType;
use prost::Message as _;
use serde::{Deserialize, Serialize};

pub use pb::OrchestrationStatus as Status;

/// The most events one instance's history may hold; an orchestrator that goes past it fails (it is looping).
pub const MAX_HISTORY: usize = 100_000;
/// The most events an instance's inbox may hold; raising more events answers an error until it drains.
pub const MAX_INBOX: usize = 10_000;

/// A persisted workflow instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub execution_id: String,
    pub status: i32,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default)]
    pub completed_ms: Option<i64>,
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub custom_status: Option<String>,
    /// Encoded `TaskFailureDetails`.
    #[serde(default, with = "b64opt")]
    pub failure: Option<Vec<u8>>,
    /// The parent's instance id and the id of the task that created this one, for a child workflow.
    #[serde(default)]
    pub parent: Option<(String, i32)>,
    /// Encoded `HistoryEvent`s: what the orchestrator has seen.
    #[serde(with = "b64vec")]
    pub history: Vec<Vec<u8>>,
    /// Encoded `HistoryEvent`s not yet handed to the orchestrator.
    #[serde(with = "b64vec")]
    pub inbox: Vec<Vec<u8>>,
}

/// Work an orchestration step starts beyond the instance itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Run an activity.
    Activity(Box<pb::ActivityRequest>),
    /// Deliver `TimerFired` for timer `id` at `fire_at_ms`.
    Timer { id: i32, fire_at_ms: i64 },
    /// Create (and start) a child workflow.
    StartChild {
        instance_id: String,
        name: String,
        input: Option<String>,
        task_id: i32,
    },
    /// Raise an event on another instance.
    SendEvent {
        instance_id: String,
        name: String,
        input: Option<String>,
    },
    /// Terminate another instance.
    Terminate {
        instance_id: String,
        output: Option<String>,
        recurse: bool,
    },
    /// Tell the parent this child ended (it is terminal now).
    NotifyParent {
        parent: String,
        event: Box<pb::HistoryEvent>,
    },
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn ts_ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// A history event the sidecar adds (event id -1, as durabletask's backends number them).
pub fn event(kind: EventType) -> pb::HistoryEvent {
    pb::HistoryEvent {
        event_id: -1,
        timestamp: Some(timestamp(now_ms())),
        router: None,
        event_type: Some(kind),
    }
}

pub fn encode(e: &pb::HistoryEvent) -> Vec<u8> {
    e.encode_to_vec()
}

pub fn decode_all(raw: &[Vec<u8>]) -> Vec<pb::HistoryEvent> {
    raw.iter()
        .filter_map(|b| pb::HistoryEvent::decode(b.as_slice()).ok())
        .collect()
}

impl Instance {
    /// A new instance whose first event, `ExecutionStarted`, waits in the inbox.
    pub fn new(id: &str, name: &str, input: Option<String>, parent: Option<(String, i32)>, app_id: &str) -> Self {
        let now = now_ms();
        let execution_id = uuid::Uuid::new_v4().simple().to_string();
        let started = event(EventType::ExecutionStarted(pb::ExecutionStartedEvent {
            name: name.to_owned(),
            input: input.clone(),
            workflow_instance: Some(pb::WorkflowInstance {
                instance_id: id.to_owned(),
                execution_id: Some(execution_id.clone()),
            }),
            parent_instance: parent.as_ref().map(|(pid, task)| pb::ParentInstanceInfo {
                task_scheduled_id: *task,
                name: None,
                version: None,
                workflow_instance: Some(pb::WorkflowInstance {
                    instance_id: pid.clone(),
                    execution_id: None,
                }),
                app_id: Some(app_id.to_owned()),
                app_namespace: None,
            }),
            scheduled_start_timestamp: None,
            ..Default::default()
        }));
        Instance {
            id: id.to_owned(),
            name: name.to_owned(),
            execution_id,
            status: Status::Pending as i32,
            created_ms: now,
            updated_ms: now,
            completed_ms: None,
            input,
            output: None,
            custom_status: None,
            failure: None,
            parent,
            history: Vec::new(),
            inbox: vec![encode(&started)],
        }
    }

    pub fn status(&self) -> Status {
        Status::try_from(self.status).unwrap_or(Status::Running)
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status(),
            Status::Completed | Status::Failed | Status::Terminated | Status::Canceled
        )
    }

    pub fn failure_details(&self) -> Option<pb::TaskFailureDetails> {
        self.failure
            .as_deref()
            .and_then(|b| pb::TaskFailureDetails::decode(b).ok())
    }

    /// Whether the orchestrator should run: events wait and the instance is neither ended nor suspended.
    pub fn runnable(&self) -> bool {
        !self.inbox.is_empty() && !self.is_terminal() && self.status() != Status::Suspended
    }

    /// Queues an event for the orchestrator; false when the inbox is full.
    pub fn push(&mut self, e: &pb::HistoryEvent) -> bool {
        if self.inbox.len() >= MAX_INBOX {
            return false;
        }
        self.inbox.push(encode(e));
        self.updated_ms = now_ms();
        true
    }

    /// The orchestrator request for the next step: the history so far, and as new events a `WorkflowStarted`
    /// followed by the inbox. Returns the request and how many inbox events it carries.
    pub fn next_step(&self) -> (pb::WorkflowRequest, usize) {
        let mut new_events = vec![event(EventType::WorkflowStarted(pb::WorkflowStartedEvent {
            version: None,
        }))];
        new_events.extend(decode_all(&self.inbox));
        // The history keeps every event (GetInstanceHistory shows them); the worker gets those it replays, as
        // durabletask's workers know no `WorkflowCompleted` or `EventSent` event.
        let past_events = decode_all(&self.history)
            .into_iter()
            .filter(|e| {
                !matches!(
                    e.event_type,
                    Some(EventType::WorkflowCompleted(_)) | Some(EventType::EventSent(_))
                )
            })
            .collect();
        let req = pb::WorkflowRequest {
            instance_id: self.id.clone(),
            execution_id: Some(self.execution_id.clone()),
            past_events,
            new_events,
            ..Default::default()
        };
        (req, self.inbox.len())
    }

    /// Ends the instance as terminated (by a client or a parent), without the orchestrator.
    pub fn terminate(&mut self, output: Option<String>) -> Vec<Effect> {
        if self.is_terminal() {
            return Vec::new();
        }
        let inbox: Vec<_> = self.inbox.drain(..).collect();
        self.history.extend(inbox);
        self.history.push(encode(&event(EventType::ExecutionTerminated(
            pb::ExecutionTerminatedEvent {
                input: output.clone(),
                recurse: false,
            },
        ))));
        self.finish(Status::Terminated, output, None)
    }

    /// Records the end and tells the parent, if any.
    fn finish(
        &mut self,
        status: Status,
        output: Option<String>,
        failure: Option<pb::TaskFailureDetails>,
    ) -> Vec<Effect> {
        let now = now_ms();
        self.history.push(encode(&event(EventType::ExecutionCompleted(
            pb::ExecutionCompletedEvent {
                workflow_status: status as i32,
                result: output.clone(),
                failure_details: failure.clone(),
            },
        ))));
        self.status = status as i32;
        self.output = output.clone();
        self.failure = failure.as_ref().map(|f| f.encode_to_vec());
        self.completed_ms = Some(now);
        self.updated_ms = now;
        let Some((parent, task)) = self.parent.clone() else {
            return Vec::new();
        };
        let event = match status {
            Status::Completed => event(EventType::ChildWorkflowInstanceCompleted(
                pb::ChildWorkflowInstanceCompletedEvent {
                    task_scheduled_id: task,
                    result: output,
                    ..Default::default()
                },
            )),
            _ => event(EventType::ChildWorkflowInstanceFailed(
                pb::ChildWorkflowInstanceFailedEvent {
                    task_scheduled_id: task,
                    failure_details: Some(failure.unwrap_or_else(|| pb::TaskFailureDetails {
                        error_type: "Terminated".into(),
                        error_message: format!("child workflow {} ended as {}", self.id, status.as_str_name()),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
            )),
        };
        vec![Effect::NotifyParent {
            parent,
            event: Box::new(event),
        }]
    }

    /// Applies an orchestrator's answer to the step built from `new_events` (which carried `taken` inbox
    /// events): the events move to the history, then each action is recorded and turned into its effect.
    pub fn apply(
        &mut self,
        new_events: Vec<pb::HistoryEvent>,
        taken: usize,
        resp: pb::WorkflowResponse,
    ) -> Vec<Effect> {
        let taken = taken.min(self.inbox.len());
        self.inbox.drain(..taken);
        self.history.extend(new_events.iter().map(encode));
        if self.status() == Status::Pending {
            self.status = Status::Running as i32;
        }
        if let Some(cs) = resp.custom_status {
            self.custom_status = Some(cs);
        }
        self.updated_ms = now_ms();
        let mut effects = Vec::new();
        let mut ended = false;
        for action in resp.actions {
            let Some(kind) = action.workflow_action_type else {
                continue;
            };
            let id = action.id;
            let recorded = |kind: EventType| pb::HistoryEvent {
                event_id: id,
                timestamp: Some(timestamp(now_ms())),
                router: None,
                event_type: Some(kind),
            };
            match kind {
                WorkflowActionType::ScheduleTask(t) => {
                    let task_execution_id = if t.task_execution_id.is_empty() {
                        uuid::Uuid::new_v4().to_string()
                    } else {
                        t.task_execution_id.clone()
                    };
                    self.history
                        .push(encode(&recorded(EventType::TaskScheduled(pb::TaskScheduledEvent {
                            name: t.name.clone(),
                            version: t.version.clone(),
                            input: t.input.clone(),
                            task_execution_id: task_execution_id.clone(),
                            ..Default::default()
                        }))));
                    effects.push(Effect::Activity(Box::new(self.activity_request(
                        id,
                        &t.name,
                        t.input,
                        task_execution_id,
                    ))));
                }
                WorkflowActionType::CreateTimer(t) => {
                    let fire_at = t.fire_at.unwrap_or_default();
                    self.history
                        .push(encode(&recorded(EventType::TimerCreated(pb::TimerCreatedEvent {
                            fire_at: Some(fire_at),
                            name: t.name.clone(),
                            rerun_parent_instance_info: None,
                            origin: t.origin.map(timer_origin),
                        }))));
                    effects.push(Effect::Timer {
                        id,
                        fire_at_ms: ts_ms(&fire_at),
                    });
                }
                WorkflowActionType::CreateChildWorkflow(c) => {
                    let instance_id = if c.instance_id.is_empty() {
                        format!("{}:{:04x}", self.id, id)
                    } else {
                        c.instance_id.clone()
                    };
                    self.history
                        .push(encode(&recorded(EventType::ChildWorkflowInstanceCreated(
                            pb::ChildWorkflowInstanceCreatedEvent {
                                instance_id: instance_id.clone(),
                                name: c.name.clone(),
                                version: c.version.clone(),
                                input: c.input.clone(),
                                ..Default::default()
                            },
                        ))));
                    effects.push(Effect::StartChild {
                        instance_id,
                        name: c.name,
                        input: c.input,
                        task_id: id,
                    });
                }
                WorkflowActionType::SendEvent(s) => {
                    self.history
                        .push(encode(&recorded(EventType::EventSent(pb::EventSentEvent {
                            instance_id: s.instance.as_ref().map(|i| i.instance_id.clone()).unwrap_or_default(),
                            name: s.name.clone(),
                            input: s.data.clone(),
                        }))));
                    if let Some(target) = s.instance {
                        effects.push(Effect::SendEvent {
                            instance_id: target.instance_id,
                            name: s.name,
                            input: s.data,
                        });
                    }
                }
                WorkflowActionType::TerminateWorkflow(t) => effects.push(Effect::Terminate {
                    instance_id: t.instance_id,
                    output: t.reason,
                    recurse: t.recurse,
                }),
                WorkflowActionType::CompleteWorkflow(c) if !ended => {
                    ended = true;
                    let status = Status::try_from(c.workflow_status).unwrap_or(Status::Failed);
                    if status == Status::ContinuedAsNew {
                        effects.retain(|e| !matches!(e, Effect::Activity(_) | Effect::Timer { .. }));
                        self.continue_as_new(c.result, c.carryover_events);
                        return effects;
                    }
                    let status = match status {
                        Status::Completed | Status::Failed | Status::Terminated | Status::Canceled => status,
                        _ => Status::Failed,
                    };
                    effects.extend(self.finish(status, c.result, c.failure_details));
                }
                WorkflowActionType::CompleteWorkflow(_)
                | WorkflowActionType::WorkflowVersionNotAvailable(_)
                | WorkflowActionType::CreateDetachedWorkflow(_) => {}
            }
        }
        if !ended {
            self.history.push(encode(&event(EventType::WorkflowCompleted(
                pb::WorkflowCompletedEvent {},
            ))));
        }
        if !self.is_terminal() && self.history.len() > MAX_HISTORY {
            effects.extend(self.finish(
                Status::Failed,
                None,
                Some(pb::TaskFailureDetails {
                    error_type: "HistoryTooLarge".into(),
                    error_message: format!("the workflow's history passed {MAX_HISTORY} events"),
                    ..Default::default()
                }),
            ));
        }
        effects
    }

    /// Starts the instance over with `input` and the carried-over events (continue-as-new).
    fn continue_as_new(&mut self, input: Option<String>, carryover: Vec<pb::HistoryEvent>) {
        let fresh = Instance::new(&self.id, &self.name, input, self.parent.clone(), "");
        let created = self.created_ms;
        let parent_started = self.parent.clone();
        *self = Instance {
            created_ms: created,
            status: Status::Running as i32,
            parent: parent_started,
            ..fresh
        };
        self.inbox.extend(carryover.iter().map(encode));
    }

    fn activity_request(
        &self,
        task_id: i32,
        name: &str,
        input: Option<String>,
        task_execution_id: String,
    ) -> pb::ActivityRequest {
        pb::ActivityRequest {
            name: name.to_owned(),
            version: None,
            input,
            workflow_instance: Some(pb::WorkflowInstance {
                instance_id: self.id.clone(),
                execution_id: Some(self.execution_id.clone()),
            }),
            task_id,
            parent_trace_context: None,
            task_execution_id,
            propagated_history: None,
        }
    }

    /// The work a running instance is waiting on, to start again after a restart: activities scheduled and not
    /// answered, timers created and not fired, children created (they are started if missing).
    pub fn outstanding(&self) -> Vec<Effect> {
        if self.is_terminal() {
            return Vec::new();
        }
        let history = decode_all(&self.history);
        let inbox = decode_all(&self.inbox);
        let mut answered_tasks = HashSet::new();
        let mut fired = HashSet::new();
        let mut children_done = HashSet::new();
        for e in history.iter().chain(inbox.iter()) {
            match &e.event_type {
                Some(EventType::TaskCompleted(t)) => {
                    answered_tasks.insert(t.task_scheduled_id);
                }
                Some(EventType::TaskFailed(t)) => {
                    answered_tasks.insert(t.task_scheduled_id);
                }
                Some(EventType::TimerFired(t)) => {
                    fired.insert(t.timer_id);
                }
                Some(EventType::ChildWorkflowInstanceCompleted(c)) => {
                    children_done.insert(c.task_scheduled_id);
                }
                Some(EventType::ChildWorkflowInstanceFailed(c)) => {
                    children_done.insert(c.task_scheduled_id);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for e in &history {
            match &e.event_type {
                Some(EventType::TaskScheduled(t)) if !answered_tasks.contains(&e.event_id) => {
                    out.push(Effect::Activity(Box::new(self.activity_request(
                        e.event_id,
                        &t.name,
                        t.input.clone(),
                        t.task_execution_id.clone(),
                    ))));
                }
                Some(EventType::TimerCreated(t)) if !fired.contains(&e.event_id) => out.push(Effect::Timer {
                    id: e.event_id,
                    fire_at_ms: t.fire_at.as_ref().map(ts_ms).unwrap_or_default(),
                }),
                Some(EventType::ChildWorkflowInstanceCreated(c)) if !children_done.contains(&e.event_id) => {
                    out.push(Effect::StartChild {
                        instance_id: c.instance_id.clone(),
                        name: c.name.clone(),
                        input: c.input.clone(),
                        task_id: e.event_id,
                    })
                }
                _ => {}
            }
        }
        out
    }

    /// Whether activity `task_id` was scheduled and has no answer yet (a late or repeated answer is dropped).
    pub fn awaits_task(&self, task_id: i32) -> bool {
        !self.is_terminal()
            && self
                .outstanding()
                .iter()
                .any(|e| matches!(e, Effect::Activity(a) if a.task_id == task_id))
    }

    /// Whether timer `id` was created and has not fired.
    pub fn awaits_timer(&self, id: i32) -> bool {
        self.outstanding()
            .iter()
            .any(|e| matches!(e, Effect::Timer { id: t, .. } if *t == id))
    }

    /// The instance as the durabletask protocol describes it.
    pub fn state(&self, with_payloads: bool) -> pb::WorkflowState {
        pb::WorkflowState {
            instance_id: self.id.clone(),
            name: self.name.clone(),
            workflow_status: self.status,
            created_timestamp: Some(timestamp(self.created_ms)),
            last_updated_timestamp: Some(timestamp(self.updated_ms)),
            completed_timestamp: self.completed_ms.map(timestamp),
            input: if with_payloads { self.input.clone() } else { None },
            output: if with_payloads { self.output.clone() } else { None },
            custom_status: self.custom_status.clone(),
            failure_details: self.failure_details(),
            execution_id: Some(self.execution_id.clone()),
            parent_instance_id: self.parent.as_ref().map(|p| p.0.clone()),
            ..Default::default()
        }
    }
}

/// The origin a timer action names, as its `TimerCreated` event records it.
fn timer_origin(o: pb::create_timer_action::Origin) -> pb::timer_created_event::Origin {
    use pb::create_timer_action::Origin as A;
    use pb::timer_created_event::Origin as E;
    match o {
        A::CreateTimer(x) => E::CreateTimer(x),
        A::ExternalEvent(x) => E::ExternalEvent(x),
        A::ActivityRetry(x) => E::ActivityRetry(x),
        A::ChildWorkflowRetry(x) => E::ChildWorkflowRetry(x),
    }
}

mod b64vec {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let strings: Vec<String> = v
            .iter()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            .collect();
        strings.serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        strings
            .iter()
            .map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

mod b64opt {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            .serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}
