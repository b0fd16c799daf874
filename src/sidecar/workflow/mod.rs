//! The workflow building block: an embedded durable-task engine. Instances (history, inbox, status) live in the
//! actor state store (one key per instance, so each step is one write); one orchestration step runs at a time
//! per instance; orchestrator and activity work goes to the SDK workers connected over `GetWorkItems`; timers are
//! durable (re-armed from the history on start); running instances resume when the sidecar starts.

mod dispatch;
pub mod instance;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dapr_durabletask_proto as pb;
use pb::history_event::EventType;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::sidecar::components::ComponentTable;
use instance::{Effect, event, now_ms};
pub use instance::{Instance, Status};
use store::InstanceStore;

/// Why a workflow operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum WorkflowError {
    #[error("no state store with actorStateStore set to true is configured: workflows need one")]
    NoStore,
    #[error("workflow instance {0:?} not found")]
    NotFound(String),
    #[error("an active workflow with ID {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("workflow instance {0:?} is not in a terminal state and cannot be purged")]
    NotTerminal(String),
    #[error("too much pending work: {0}")]
    Busy(String),
    #[error("workflow state store: {0}")]
    Store(String),
}

pub type Result<T> = std::result::Result<T, WorkflowError>;

/// The longest instance id, event name or workflow name accepted.
const MAX_NAME: usize = 1024;

/// Dapr's rule for instance ids: letters, digits, `-` and `_` (plus `:` for ids the engine makes for children).
pub fn check_instance_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_NAME || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)) {
        return Err(WorkflowError::Invalid(format!(
            "workflow instance ID {:?} is invalid: only alphanumeric and underscore characters are allowed",
            crate::echo::echo(id)
        )));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(WorkflowError::Invalid(format!(
            "{what} must be between 1 and {MAX_NAME} characters"
        )));
    }
    Ok(())
}

/// The engine's view of one instance: loaded lazily, and the orchestration step in flight.
#[derive(Default)]
struct Slot {
    loaded: bool,
    instance: Option<Instance>,
    /// The step handed to a worker: its sequence number, the new events it carried, how many were inbox events.
    step: Option<(u64, Vec<pb::HistoryEvent>, usize)>,
}

struct Engine {
    store: InstanceStore,
    app_id: String,
    slots: std::sync::Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    dispatcher: dispatch::Dispatcher,
    changed: watch::Sender<u64>,
    seq: AtomicU64,
    shutdown: CancellationToken,
}

/// The workflow API the gRPC and HTTP adapters call.
#[derive(Clone)]
pub struct Workflows {
    engine: Arc<Engine>,
}

impl Workflows {
    pub fn new(table: Arc<ComponentTable>, app_id: &str, shutdown: CancellationToken) -> Self {
        Workflows {
            engine: Arc::new(Engine {
                store: InstanceStore::new(table, app_id),
                app_id: app_id.to_owned(),
                slots: Default::default(),
                dispatcher: Default::default(),
                changed: watch::channel(0).0,
                seq: AtomicU64::new(1),
                shutdown,
            }),
        }
    }

    fn slot(&self, id: &str) -> Arc<Mutex<Slot>> {
        let mut slots = self.engine.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(id.to_owned()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        self.engine.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    async fn load(&self, slot: &mut Slot, id: &str) -> Result<()> {
        if !slot.loaded {
            slot.instance = self.engine.store.load(id).await?;
            slot.loaded = true;
        }
        Ok(())
    }

    /// Writes the instance, then wakes whoever waits on instances.
    async fn save(&self, slot: &mut Slot) -> Result<()> {
        let Some(inst) = &slot.instance else { return Ok(()) };
        if let Err(e) = self.engine.store.save(inst).await {
            // What is in memory is no longer what is stored: read it again next time.
            slot.loaded = false;
            slot.instance = None;
            slot.step = None;
            return Err(e);
        }
        self.engine.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Resumes every instance that was running when the sidecar last stopped.
    pub async fn resume_all(&self) {
        let ids = match self.engine.store.running().await {
            Ok(ids) => ids,
            Err(WorkflowError::NoStore) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the running workflow instances to resume them");
                return;
            }
        };
        if !ids.is_empty() {
            tracing::info!(count = ids.len(), "resuming running workflow instances");
        }
        for id in ids {
            if let Err(e) = self.kick(&id, true).await {
                tracing::warn!(instance = %id, error = %e, "could not resume a workflow instance");
            }
        }
    }

    /// Starts what instance `id` waits on: its next orchestration step, and with `outstanding` its pending
    /// activities, timers and children too (after a restart).
    async fn kick(&self, id: &str, outstanding: bool) -> Result<()> {
        let slot = self.slot(id);
        let effects = {
            let mut s = slot.lock().await;
            self.load(&mut s, id).await?;
            self.dispatch_step(&mut s);
            match (&s.instance, outstanding) {
                (Some(inst), true) => inst.outstanding(),
                _ => Vec::new(),
            }
        };
        self.run_effects(id, effects).await;
        Ok(())
    }

    /// Hands the next orchestration step to a worker when one is due and none is in flight.
    fn dispatch_step(&self, s: &mut Slot) {
        let Some(inst) = &s.instance else { return };
        if s.step.is_some() || !inst.runnable() {
            return;
        }
        let seq = self.engine.seq.fetch_add(1, Ordering::Relaxed);
        let (req, taken) = inst.next_step();
        let token = format!("o|{}|{seq}", inst.id);
        let new_events = req.new_events.clone();
        let item = pb::WorkItem {
            completion_token: token,
            request: Some(pb::work_item::Request::WorkflowRequest(req)),
        };
        if self.engine.dispatcher.push(item) {
            s.step = Some((seq, new_events, taken));
        } else {
            tracing::warn!(instance = %inst.id, "the workflow work queue is full; the step waits for a restart");
        }
    }

    /// Schedules a new instance of workflow `name`.
    pub async fn start(&self, id: Option<String>, name: &str, input: Option<String>) -> Result<String> {
        check_name("workflow name", name)?;
        let id = match id.filter(|i| !i.is_empty()) {
            Some(id) => id,
            None => uuid::Uuid::new_v4().to_string(),
        };
        check_instance_id(&id)?;
        self.create(&id, name, input, None).await?;
        Ok(id)
    }

    async fn create(&self, id: &str, name: &str, input: Option<String>, parent: Option<(String, i32)>) -> Result<()> {
        self.engine.store.check()?;
        let slot = self.slot(id);
        let mut s = slot.lock().await;
        self.load(&mut s, id).await?;
        if let Some(existing) = &s.instance
            && !existing.is_terminal()
        {
            if parent.is_some() {
                return Ok(()); // A child started again after a restart.
            }
            return Err(WorkflowError::AlreadyExists(id.to_owned()));
        }
        s.instance = Some(Instance::new(id, name, input, parent, &self.engine.app_id));
        s.step = None;
        self.engine.store.mark_running(id, true).await?;
        self.save(&mut s).await?;
        self.dispatch_step(&mut s);
        Ok(())
    }

    /// The instance, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Instance>> {
        let slot = self.slot(id);
        let mut s = slot.lock().await;
        self.load(&mut s, id).await?;
        Ok(s.instance.clone())
    }

    /// Waits until instance `id` satisfies `done` (it must exist), or returns None if it does not exist.
    pub async fn wait(&self, id: &str, done: impl Fn(&Instance) -> bool) -> Result<Option<Instance>> {
        let mut changes = self.engine.changed.subscribe();
        loop {
            changes.borrow_and_update();
            match self.get(id).await? {
                None => return Ok(None),
                Some(inst) if done(&inst) => return Ok(Some(inst)),
                Some(_) => {}
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Ok(None) },
                _ = self.engine.shutdown.cancelled() => return Err(WorkflowError::Busy("the sidecar is shutting down".into())),
            }
        }
    }

    /// Applies `change` to instance `id` (which must exist) and saves it, then runs what it started.
    async fn update(&self, id: &str, change: impl FnOnce(&mut Instance) -> Result<Vec<Effect>>) -> Result<()> {
        let slot = self.slot(id);
        let effects = {
            let mut s = slot.lock().await;
            self.load(&mut s, id).await?;
            let Some(inst) = s.instance.as_mut() else {
                return Err(WorkflowError::NotFound(id.to_owned()));
            };
            let effects = change(inst)?;
            let terminal = inst.is_terminal();
            self.save(&mut s).await?;
            if terminal {
                s.step = None;
                self.engine.store.mark_running(id, false).await?;
            }
            self.dispatch_step(&mut s);
            effects
        };
        self.run_effects(id, effects).await;
        Ok(())
    }

    /// Raises event `name` on instance `id`.
    pub async fn raise_event(&self, id: &str, name: &str, input: Option<String>) -> Result<()> {
        check_name("event name", name)?;
        self.update(id, |inst| {
            if inst.is_terminal() {
                return Ok(Vec::new());
            }
            let e = event(EventType::EventRaised(pb::EventRaisedEvent {
                name: name.to_owned(),
                input,
            }));
            if !inst.push(&e) {
                return Err(WorkflowError::Busy(format!(
                    "instance {id:?} has too many unprocessed events"
                )));
            }
            Ok(Vec::new())
        })
        .await
    }

    /// Terminates instance `id` (and with `recursive` its running children).
    pub async fn terminate(&self, id: &str, output: Option<String>, recursive: bool) -> Result<()> {
        let mut children = Vec::new();
        self.update(id, |inst| {
            if recursive {
                children = running_children(inst);
            }
            Ok(inst.terminate(output))
        })
        .await?;
        for child in children {
            let _ = Box::pin(self.terminate(&child, None, true)).await;
        }
        Ok(())
    }

    /// Suspends instance `id`: no orchestration step runs until it is resumed.
    pub async fn suspend(&self, id: &str, reason: Option<String>) -> Result<()> {
        self.update(id, |inst| {
            if inst.status() == Status::Running || inst.status() == Status::Pending {
                inst.push(&event(EventType::ExecutionSuspended(pb::ExecutionSuspendedEvent {
                    input: reason,
                })));
                inst.status = Status::Suspended as i32;
            }
            Ok(Vec::new())
        })
        .await
    }

    /// Resumes a suspended instance.
    pub async fn resume(&self, id: &str, reason: Option<String>) -> Result<()> {
        self.update(id, |inst| {
            if inst.status() == Status::Suspended {
                inst.push(&event(EventType::ExecutionResumed(pb::ExecutionResumedEvent {
                    input: reason,
                })));
                inst.status = Status::Running as i32;
            }
            Ok(Vec::new())
        })
        .await
    }

    /// Deletes a terminal instance's state (and with `recursive` its children's); the number deleted.
    pub async fn purge(&self, id: &str, recursive: bool) -> Result<i32> {
        let slot = self.slot(id);
        let children = {
            let mut s = slot.lock().await;
            self.load(&mut s, id).await?;
            let Some(inst) = &s.instance else { return Ok(0) };
            if !inst.is_terminal() {
                return Err(WorkflowError::NotTerminal(id.to_owned()));
            }
            let children = if recursive { all_children(inst) } else { Vec::new() };
            self.engine.store.delete(id).await?;
            self.engine.store.mark_running(id, false).await?;
            s.instance = None;
            children
        };
        self.forget(id);
        self.engine.changed.send_modify(|v| *v += 1);
        let mut count = 1;
        for child in children {
            count += Box::pin(self.purge(&child, true)).await.unwrap_or(0);
        }
        Ok(count)
    }

    /// Feeds work items to one worker until it disconnects.
    pub fn work_items(&self) -> mpsc::Receiver<std::result::Result<pb::WorkItem, tonic::Status>> {
        let (tx, rx) = mpsc::channel(8);
        let engine = self.engine.clone();
        tokio::spawn(async move { engine.dispatcher.serve(tx, engine.shutdown.clone()).await });
        rx
    }

    /// A worker's answer to an orchestration step.
    pub async fn complete_step(&self, resp: pb::WorkflowResponse) -> Result<()> {
        let token = resp.completion_token.clone();
        let mut parts = token.split('|');
        let (Some("o"), Some(id), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(WorkflowError::Invalid("unknown workflow completion token".into()));
        };
        let seq: u64 = seq
            .parse()
            .map_err(|_| WorkflowError::Invalid("unknown workflow completion token".into()))?;
        let id = id.to_owned();
        self.engine.dispatcher.complete(&token);
        let slot = self.slot(&id);
        let effects = {
            let mut s = slot.lock().await;
            self.load(&mut s, &id).await?;
            let Some((step_seq, new_events, taken)) = s.step.take() else {
                return Ok(()); // A late answer to a step already done or abandoned.
            };
            if step_seq != seq {
                s.step = Some((step_seq, new_events, taken));
                return Ok(());
            }
            let Some(inst) = s.instance.as_mut() else { return Ok(()) };
            if inst.is_terminal() {
                return Ok(());
            }
            let effects = inst.apply(new_events, taken, resp);
            let terminal = inst.is_terminal();
            self.save(&mut s).await?;
            if terminal {
                self.engine.store.mark_running(&id, false).await?;
            }
            self.dispatch_step(&mut s);
            effects
        };
        self.run_effects(&id, effects).await;
        Ok(())
    }

    /// A worker's answer to an activity.
    pub async fn complete_activity(&self, resp: pb::ActivityResponse) -> Result<()> {
        self.engine.dispatcher.complete(&resp.completion_token);
        let task_id = resp.task_id;
        let e = match resp.failure_details {
            Some(f) => event(EventType::TaskFailed(pb::TaskFailedEvent {
                task_scheduled_id: task_id,
                failure_details: Some(f),
                ..Default::default()
            })),
            None => event(EventType::TaskCompleted(pb::TaskCompletedEvent {
                task_scheduled_id: task_id,
                result: resp.result,
                ..Default::default()
            })),
        };
        self.deliver(&resp.instance_id, e, |inst| inst.awaits_task(task_id))
            .await
    }

    /// Adds event `e` to instance `id`'s inbox if `wanted` says the instance still waits for it.
    async fn deliver(&self, id: &str, e: pb::HistoryEvent, wanted: impl FnOnce(&Instance) -> bool) -> Result<()> {
        let r = self
            .update(id, |inst| {
                if wanted(inst) && !inst.push(&e) {
                    return Err(WorkflowError::Busy(format!(
                        "instance {id:?} has too many unprocessed events"
                    )));
                }
                Ok(Vec::new())
            })
            .await;
        match r {
            Err(WorkflowError::NotFound(_)) => Ok(()), // Purged meanwhile.
            r => r,
        }
    }

    /// Runs what a step of instance `id` started (no instance lock is held here).
    async fn run_effects(&self, id: &str, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Activity(req) => {
                    let token = format!("a|{id}|{}|{}", req.task_id, req.task_execution_id);
                    let item = pb::WorkItem {
                        completion_token: token,
                        request: Some(pb::work_item::Request::ActivityRequest(*req)),
                    };
                    if !self.engine.dispatcher.push(item) {
                        tracing::warn!(instance = %id, "the workflow work queue is full; an activity waits for a restart");
                    }
                }
                Effect::Timer { id: timer, fire_at_ms } => self.arm_timer(id, timer, fire_at_ms),
                Effect::StartChild {
                    instance_id,
                    name,
                    input,
                    task_id,
                } => {
                    let created = async {
                        check_instance_id(&instance_id)?;
                        Box::pin(self.create(&instance_id, &name, input, Some((id.to_owned(), task_id)))).await
                    };
                    if let Err(e) = created.await {
                        let failed = event(EventType::ChildWorkflowInstanceFailed(
                            pb::ChildWorkflowInstanceFailedEvent {
                                task_scheduled_id: task_id,
                                failure_details: Some(pb::TaskFailureDetails {
                                    error_type: "ChildWorkflowStartFailed".into(),
                                    error_message: e.to_string(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        ));
                        let _ = Box::pin(self.deliver(id, failed, |_| true)).await;
                    }
                }
                Effect::SendEvent {
                    instance_id,
                    name,
                    input,
                } => {
                    let _ = Box::pin(self.raise_event(&instance_id, &name, input)).await;
                }
                Effect::Terminate {
                    instance_id,
                    output,
                    recurse,
                } => {
                    let _ = Box::pin(self.terminate(&instance_id, output, recurse)).await;
                }
                Effect::NotifyParent { parent, event } => {
                    if let Err(e) = Box::pin(self.deliver(&parent, *event, |p| !p.is_terminal())).await {
                        tracing::warn!(instance = %id, parent = %parent, error = %e, "could not tell the parent workflow a child ended");
                    }
                }
            }
        }
    }

    /// Fires timer `timer` of instance `id` at `fire_at_ms` (in a task; re-armed from the history after a restart).
    fn arm_timer(&self, id: &str, timer: i32, fire_at_ms: i64) {
        let this = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let wait = u64::try_from(fire_at_ms.saturating_sub(now_ms())).unwrap_or(0);
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
                _ = this.engine.shutdown.cancelled() => return,
            }
            let fired = event(EventType::TimerFired(pb::TimerFiredEvent {
                fire_at: Some(instance::timestamp(fire_at_ms)),
                timer_id: timer,
            }));
            if let Err(e) = this.deliver(&id, fired, |inst| inst.awaits_timer(timer)).await {
                tracing::warn!(instance = %id, timer, error = %e, "could not fire a workflow timer");
            }
        });
    }

    /// The instance's history.
    pub async fn history(&self, id: &str) -> Result<Vec<pb::HistoryEvent>> {
        let inst = self
            .get(id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(id.to_owned()))?;
        Ok(instance::decode_all(&inst.history))
    }

    /// The ids of the instances that are not yet terminal.
    pub async fn running_ids(&self) -> Result<Vec<String>> {
        self.engine.store.running().await
    }
}

fn children_of(inst: &Instance) -> Vec<(String, i32)> {
    instance::decode_all(&inst.history)
        .into_iter()
        .filter_map(|e| match e.event_type {
            Some(EventType::ChildWorkflowInstanceCreated(c)) => Some((c.instance_id, e.event_id)),
            _ => None,
        })
        .collect()
}

fn all_children(inst: &Instance) -> Vec<String> {
    children_of(inst).into_iter().map(|c| c.0).collect()
}

fn running_children(inst: &Instance) -> Vec<String> {
    let pending: Vec<i32> = inst
        .outstanding()
        .into_iter()
        .filter_map(|e| match e {
            Effect::StartChild { task_id, .. } => Some(task_id),
            _ => None,
        })
        .collect();
    children_of(inst)
        .into_iter()
        .filter(|(_, task)| pending.contains(task))
        .map(|c| c.0)
        .collect()
}

#[cfg(test)]
mod tests;
