//! Messages about peers and subworkers: `Hello`, `Register`, task-list changes, plugin
//! events, restarts and `Unregister` (the rest of [`Dispatcher::handle`] is about tasks).

use tracing::{info, warn};

use super::{check_worker_tasks, reply, Dispatcher, Now, PeerInfo};
use crate::{
    protocol::{
        for_people, max_version, negotiate, FromControlPlane, TaskId, TaskSpec, Welcome,
        WorkerSecret, MAX_ID_BYTES, MIN_PROTOCOL_VERSION,
    },
    transport::PeerId,
};

impl Dispatcher {
    /// `Hello`: checks the peer's id and protocol version, then welcomes it.
    pub(super) fn hello(&mut self, peer: &PeerId, hello: crate::protocol::Hello) {
        if hello.peer_id.len() > MAX_ID_BYTES {
            self.actions.push(reply(
                peer,
                FromControlPlane::Refused {
                    reason: format!("a peer id is at most {MAX_ID_BYTES} bytes"),
                },
            ));
            return;
        }
        let ours = (MIN_PROTOCOL_VERSION, max_version());
        let theirs = hello.versions();
        let Some(version) = negotiate(ours, theirs) else {
            self.actions.push(reply(
                peer,
                FromControlPlane::Refused {
                    reason: format!(
                        "no protocol version in common: this control plane speaks versions {} to {}, the peer {} to {}",
                        ours.0, ours.1, theirs.0, theirs.1
                    ),
                },
            ));
            return;
        };
        self.peers.insert(
            *peer,
            PeerInfo {
                kind: hello.peer_kind,
                id: hello.peer_id,
            },
        );
        let mut welcome = Welcome::new(version, self.config.id.clone());
        welcome.features = vec![
            "batch".into(),
            "wait".into(),
            "cancel".into(),
            format!("max-payload-size={}", self.config.max_payload_bytes),
            format!("max-message-size={}", self.config.max_message_bytes),
        ];
        if version >= 2 {
            welcome
                .features
                .push(crate::protocol::OUTCOMES_BATCH_FEATURE.into());
            welcome
                .features
                .push(crate::protocol::PREFETCH_FEATURE.into());
        }
        self.actions
            .push(reply(peer, FromControlPlane::Welcome(welcome)));
    }

    /// A subworker's plugin changed: logged and kept in the event log.
    pub(super) fn plugin_event(&mut self, peer: &PeerId, event: crate::protocol::PluginEvent) {
        let worker = self
            .workers
            .by_peer(peer)
            .map(|w| w.to_string())
            .unwrap_or_else(|| "unregistered peer".to_string());
        let message = for_people(&event.message, 1024);
        let kind = for_people(&event.kind, 32);
        if kind == "rejected" {
            warn!(%worker, "{message}");
        } else {
            info!(%worker, "{message}");
        }
        if let Some(id) = self.workers.by_peer(peer).cloned() {
            self.observer
                .plugin_event(&id, &bounded_event(&event), self.now.unix_ms);
        }
        self.record_event(&format!("plugin.{kind}"), &worker, message);
    }

    /// `Register`: a subworker joins (or comes back) under its id; see the registration
    /// rules in docs/PROTOCOL.md §8.1.
    pub(super) fn register(&mut self, peer: &PeerId, reg: crate::protocol::Registration, now: Now) {
        if let Err(reason) = check_worker_tasks(reg.worker_id.as_str(), &reg.tasks) {
            self.actions
                .push(reply(peer, FromControlPlane::Refused { reason }));
            return;
        }
        let own = reg.worker_id.as_str() == self.config.id;
        if own && reg.secret != Some(self.config.own_secret) {
            warn!(worker = %reg.worker_id, "refusing a registration under the control plane's own worker id");
            self.actions.push(reply(
                peer,
                FromControlPlane::Refused {
                    reason: format!(
                        "worker id `{}` is the control plane's own subworker; choose another --worker-id",
                        reg.worker_id
                    ),
                },
            ));
            return;
        }
        let secret = match self.workers.get(&reg.worker_id) {
            Some(_) if own => self.config.own_secret,
            // A new process (the host rebooted, say) under an id the data
            // directory knew: it holds none of the old one's tasks, which go
            // back to the queue.
            Some(holder) if holder.from_store && reg.secret.is_none() => {
                info!(worker = %reg.worker_id, "a new subworker under an id known from the data directory: the tasks the old one held go back to the queue");
                WorkerSecret::new()
            }
            // Known id: only the process holding its secret (the same one
            // reconnecting, or its restart in place) may take it over.
            Some(holder) => {
                if reg.secret != Some(holder.secret) {
                    let live = holder.gone_since.is_none() && self.peers.contains_key(&holder.peer);
                    warn!(worker = %reg.worker_id, "refusing a registration under an id in use, without its secret");
                    let reason = if live {
                        format!(
                            "worker id `{}` is in use by another subworker; choose a unique --worker-id",
                            reg.worker_id
                        )
                    } else {
                        format!(
                            "worker id `{}` belongs to a subworker that is restarting; choose a unique --worker-id or try again after the inactivity limit",
                            reg.worker_id
                        )
                    };
                    self.actions
                        .push(reply(peer, FromControlPlane::Refused { reason }));
                    return;
                }
                holder.secret
            }
            None if own => self.config.own_secret,
            None => WorkerSecret::new(),
        };
        if own {
            self.own_tasks = reg
                .tasks
                .iter()
                .map(|t| (t.name.clone(), t.clone()))
                .collect();
        }
        info!(
            worker = %reg.worker_id,
            tasks = reg.tasks.len(),
            concurrency = reg.concurrency,
            "subworker registered"
        );
        // Claims count only with the lease of the task's current assignment.
        let running: Vec<TaskId> = reg
            .running
            .iter()
            .filter(|claim| {
                self.tasks
                    .get(&claim.task_id)
                    .is_some_and(|e| e.lease == Some(claim.lease))
            })
            .map(|claim| claim.task_id)
            .collect();
        if running.len() < reg.running.len() {
            warn!(
                worker = %reg.worker_id,
                "{} claimed running task(s) without their current lease: ignored",
                reg.running.len() - running.len()
            );
        }
        self.names_served(reg.tasks.iter().map(|t| t.name.as_str()));
        self.observer
            .worker_plugins(&reg.worker_id, bounded_plugins(reg.plugins));
        let registered = self.workers.register(
            *peer,
            reg.worker_id.clone(),
            reg.tasks,
            reg.concurrency,
            reg.address,
            reg.pid,
            secret,
            &running,
            now.at,
        );
        if own {
            self.workers.set_fallback(&reg.worker_id);
        }
        self.workers.set_prefetch(&reg.worker_id, reg.prefetch);
        for task in registered.orphaned {
            self.worker_lost_task(task, &reg.worker_id);
        }
        for task in &running {
            self.reclaim(*task, &reg.worker_id);
        }
        self.record_event(
            "worker.registered",
            reg.worker_id.as_str(),
            format!("subworker {} registered", reg.worker_id),
        );
        self.worker_changed(&reg.worker_id, Some(secret));
        self.actions
            .push(reply(peer, FromControlPlane::Registered { secret }));
        // A schedule its plugins declare is due at once: submitted with this
        // registration, not at the next tick (so it never races a client's first task).
        self.fire_periodic();
    }

    /// A subworker's task list changed (a plugin was added, reloaded or removed).
    pub(super) fn tasks_changed(&mut self, peer: &PeerId, tasks: Vec<TaskSpec>) {
        if let Err(reason) = check_worker_tasks("", &tasks) {
            warn!("ignoring a task list change: {reason}");
            return;
        }
        if let Some(id) = self.workers.by_peer(peer).cloned() {
            self.names_served(tasks.iter().map(|t| t.name.as_str()));
            if id.as_str() == self.config.id {
                self.own_tasks = tasks.iter().map(|t| (t.name.clone(), t.clone())).collect();
            }
            if let Some(worker) = self.workers.get_mut(&id) {
                info!(worker = %id, tasks = tasks.len(), "subworker task list changed");
                worker.tasks = tasks.into_iter().map(|t| (t.name.clone(), t)).collect();
            }
        }
    }

    /// A subworker is about to re-execute itself in place.
    pub(super) fn restarting(&mut self, peer: &PeerId) {
        if let Some(id) = self.workers.by_peer(peer).cloned() {
            info!(worker = %id, "subworker restarting in place");
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.draining = true;
                worker.restarting = true;
            }
            self.record_event(
                "worker.restarting",
                id.as_str(),
                format!("subworker {id} restarting in place"),
            );
        }
    }

    /// A subworker leaves; what it held goes back to the queue.
    pub(super) fn unregister(&mut self, peer: &PeerId) {
        if let Some(id) = self.workers.by_peer(peer).cloned() {
            info!(worker = %id, "subworker unregistered");
            self.record_event(
                "worker.left",
                id.as_str(),
                format!("subworker {id} unregistered"),
            );
            self.remove_worker(&id);
        }
        self.peers.remove(peer);
    }
}

/// What a subworker says of its plugins, bounded for keeping: at most 64 plugins, each
/// with at most 1,000 task names, every string cut for people.
fn bounded_plugins(plugins: Vec<crate::protocol::PluginInfo>) -> Vec<crate::protocol::PluginInfo> {
    plugins
        .into_iter()
        .take(64)
        .map(|p| {
            crate::protocol::PluginInfo::new(
                for_people(&p.name, 128),
                for_people(&p.version, 64),
                for_people(&p.build, 64),
                for_people(&p.path, 512),
                p.tasks
                    .iter()
                    .take(1_000)
                    .map(|t| for_people(t, crate::protocol::MAX_ID_BYTES))
                    .collect(),
            )
        })
        .collect()
}

/// A subworker's plugin event, bounded for keeping like [`bounded_plugins`].
fn bounded_event(event: &crate::protocol::PluginEvent) -> crate::protocol::PluginEvent {
    let cut = |s: &Option<String>| s.as_deref().map(|s| for_people(s, 64));
    let mut bounded = crate::protocol::PluginEvent::new(
        for_people(&event.kind, 32),
        for_people(&event.plugin, 128),
        for_people(&event.path, 512),
        for_people(&event.message, 1024),
    );
    bounded.old_version = cut(&event.old_version);
    bounded.new_version = cut(&event.new_version);
    bounded.old_build = cut(&event.old_build);
    bounded.new_build = cut(&event.new_build);
    bounded.tasks = event
        .tasks
        .iter()
        .take(1_000)
        .map(|t| for_people(t, crate::protocol::MAX_ID_BYTES))
        .collect();
    bounded
}
