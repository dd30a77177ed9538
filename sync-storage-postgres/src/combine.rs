//! Pushes of one group from this instance reach PostgreSQL one turn at a
//! time, and a turn carries every push of the group waiting by then, in one
//! transaction (flat combining; docs/deploy.md "Pushes of one group, one
//! transaction at a time").
//!
//! Why: the group's row lock orders the group's pushes anyway (cursors are
//! assigned under it). Sent side by side, the pushes of one group each take
//! a pooled connection only to wait on that lock in the server, so a pool
//! smaller than the number of devices fills with waiters of a few groups
//! while other groups' pushes wait for a connection; and each commit
//! flushes the WAL on its own. Queued here instead, a group holds at most
//! one connection of this instance, and the pushes that queued while a turn
//! ran share the next turn's commit and its flush.
//!
//! Every push waits in its group's queue, then either finds it was carried
//! by an earlier turn (its answer is there) or takes the next turn itself and
//! carries whatever is queued by then (its own push among them). A turn
//! holds no lock of this process while it waits on the database other than
//! the group's own turn. Replies travel over one-shot channels; a push whose
//! turn was cancelled midway (the relay dropping the request) is answered
//! [`StorageError::Unavailable`]: it may or may not be stored, and the
//! device's retry is answered as a duplicate if it was.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use sync_protocol::GroupId;
use sync_storage::{PushOutcome, PushRequest, StorageError};
use tokio::sync::oneshot;

/// Most pushes one turn carries.
pub(crate) const MAX_PUSHES: usize = 32;

/// Most payload bytes one turn carries (its first push whatever its size).
pub(crate) const MAX_BYTES: usize = 4 << 20;

type Reply = oneshot::Sender<Result<PushOutcome, StorageError>>;

/// The queues of the groups with pushes in flight here (a group's entry
/// goes when its last push is answered).
#[derive(Default)]
pub(crate) struct Combiner {
    groups: Mutex<HashMap<GroupId, Arc<Queue>>>,
}

#[derive(Default)]
struct Queue {
    waiting: Mutex<VecDeque<(PushRequest, Reply)>>,
    turn: tokio::sync::Mutex<()>,
}

impl Combiner {
    /// Queue `req` and wait until a turn of its group carried it: `apply`
    /// gets the pushes of one turn (at most [`MAX_PUSHES`], [`MAX_BYTES`]
    /// of payload beyond the first, in the order they queued) and must
    /// answer each, in that order.
    pub(crate) async fn push<F, Fut>(
        &self,
        req: PushRequest,
        apply: F,
    ) -> Result<PushOutcome, StorageError>
    where
        F: FnOnce(Vec<PushRequest>) -> Fut,
        Fut: Future<Output = Vec<Result<PushOutcome, StorageError>>>,
    {
        let group = req.group;
        let queue = self.queue(group);
        let (reply, mut answer) = oneshot::channel();
        lock(&queue.waiting).push_back((req, reply));
        let answered = tokio::select! {
            biased;
            answered = &mut answer => Some(answered),
            _turn = queue.turn.lock() => {
                let (reqs, replies): (Vec<_>, Vec<_>) = take_turn(&queue).into_iter().unzip();
                if !reqs.is_empty() {
                    let results = apply(reqs).await;
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                None
            }
        };
        let answered = match answered {
            Some(a) => a,
            // This turn carried this push, or an earlier one did.
            None => answer.await,
        };
        drop(queue);
        self.release(group);
        answered.unwrap_or_else(|_| {
            Err(StorageError::unavailable(
                "the transaction carrying this push was interrupted; it may be stored: retry it",
            ))
        })
    }

    fn queue(&self, group: GroupId) -> Arc<Queue> {
        Arc::clone(lock(&self.groups).entry(group).or_default())
    }

    /// Forget `group`'s queue when nobody holds it any more.
    fn release(&self, group: GroupId) {
        let mut groups = lock(&self.groups);
        if groups.get(&group).is_some_and(|q| Arc::strong_count(q) == 1) {
            groups.remove(&group);
        }
    }

    /// Groups with a queue now (for tests).
    #[cfg(test)]
    pub(crate) fn groups(&self) -> usize {
        lock(&self.groups).len()
    }
}

/// The pushes of the next turn, taken off the front of the queue.
fn take_turn(queue: &Queue) -> Vec<(PushRequest, Reply)> {
    let mut waiting = lock(&queue.waiting);
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    while let Some((req, _)) = waiting.front() {
        let size: usize = req.items.iter().map(|i| i.payload.len()).sum();
        if !taken.is_empty() && (taken.len() >= MAX_PUSHES || bytes + size > MAX_BYTES) {
            break;
        }
        bytes += size;
        taken.extend(waiting.pop_front());
    }
    taken
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use sync_protocol::{BlobId, DeviceId};
    use sync_storage::NewBlob;

    fn req(group: u8, id: u8, bytes: usize) -> PushRequest {
        PushRequest {
            group: GroupId([group; 32]),
            sender: DeviceId([1; 32]),
            items: vec![NewBlob {
                blob_id: BlobId([id; 16]),
                payload: vec![0; bytes],
                expires_at_ms: 1,
            }],
            now_ms: 0,
        }
    }

    /// Each push answered with its blob id's first byte as head.
    fn answers(reqs: &[PushRequest]) -> Vec<Result<PushOutcome, StorageError>> {
        reqs.iter()
            .map(|r| {
                Ok(PushOutcome {
                    results: Vec::new(),
                    head: u64::from(r.items[0].blob_id.0[0]),
                })
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_queued_during_a_turn_share_the_next_and_each_gets_its_answer() {
        let combiner = Arc::new(Combiner::default());
        let turns = Arc::new(Mutex::new(Vec::<usize>::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for id in 1..=40u8 {
            let (combiner, turns, running) = (
                Arc::clone(&combiner),
                Arc::clone(&turns),
                Arc::clone(&running),
            );
            tasks.push(tokio::spawn(async move {
                combiner
                    .push(req(7, id, 10), |reqs| async move {
                        // One turn of a group at a time.
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        lock(&turns).push(reqs.len());
                        running.fetch_sub(1, Ordering::SeqCst);
                        answers(&reqs)
                    })
                    .await
            }));
        }
        for (id, task) in (1..=40u64).zip(tasks) {
            assert_eq!(task.await.unwrap().unwrap().head, id);
        }
        let turns = lock(&turns).clone();
        assert_eq!(turns.iter().sum::<usize>(), 40, "{turns:?}");
        assert!(turns.len() < 40, "pushes were combined: {turns:?}");
        assert!(turns.iter().all(|&n| n <= MAX_PUSHES), "{turns:?}");
        assert_eq!(combiner.groups(), 0, "queues are forgotten");
    }

    #[test]
    fn a_turn_is_capped_by_count_and_bytes_but_takes_at_least_one() {
        let queue = Queue::default();
        let mut replies = Vec::new();
        let mut put = |r: PushRequest| {
            let (tx, rx) = oneshot::channel();
            lock(&queue.waiting).push_back((r, tx));
            replies.push(rx);
        };
        put(req(1, 1, MAX_BYTES + 1));
        put(req(1, 2, 1));
        assert_eq!(take_turn(&queue).len(), 1, "a large first push goes alone");
        for id in 0..(MAX_PUSHES as u8 + 3) {
            put(req(1, id, 1));
        }
        // The small one left from before, then MAX_PUSHES - 1 more.
        assert_eq!(take_turn(&queue).len(), MAX_PUSHES);
        assert_eq!(take_turn(&queue).len(), 4);
        put(req(1, 1, MAX_BYTES / 2));
        put(req(1, 2, MAX_BYTES / 2));
        put(req(1, 3, 1));
        assert_eq!(take_turn(&queue).len(), 2, "bytes cap the turn");
    }

    #[tokio::test]
    async fn pushes_carried_by_a_cancelled_turn_are_answered_unavailable() {
        let combiner = Arc::new(Combiner::default());
        let (release_x, released) = oneshot::channel::<()>();
        let (x_in, x_entered) = oneshot::channel::<()>();
        let c = Arc::clone(&combiner);
        let x = tokio::spawn(async move {
            c.push(req(3, 1, 1), |reqs| async move {
                let _ = x_in.send(());
                let _ = released.await;
                answers(&reqs)
            })
            .await
        });
        x_entered.await.unwrap();
        // A then B queue behind X's turn; A takes the next turn (the turn
        // lock is fair) and carries both, then A is cancelled.
        let (a_in, a_entered) = oneshot::channel::<()>();
        let c = Arc::clone(&combiner);
        let a = tokio::spawn(async move {
            c.push(req(3, 2, 1), |reqs| async move {
                let _ = a_in.send(());
                std::future::pending::<()>().await;
                answers(&reqs)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = Arc::clone(&combiner);
        let b = tokio::spawn(async move {
            c.push(req(3, 3, 1), |_| async move {
                panic!("B's push was carried by A's turn")
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        release_x.send(()).unwrap();
        assert_eq!(x.await.unwrap().unwrap().head, 1);
        a_entered.await.unwrap();
        a.abort();
        assert!(a.await.is_err());
        match b.await.unwrap() {
            Err(StorageError::Unavailable(e)) => assert!(e.to_string().contains("retry"), "{e}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // The group's queue is forgotten once nothing holds it.
        combiner
            .push(req(3, 4, 1), |reqs| async move { answers(&reqs) })
            .await
            .unwrap();
        assert_eq!(combiner.groups(), 0);
    }
}
