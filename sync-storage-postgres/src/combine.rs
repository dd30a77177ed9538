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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use sync_protocol::GroupId;
use sync_storage::{PushOutcome, PushRequest, StorageError};
use tokio::sync::oneshot;

/// Most pushes one turn carries.
pub(crate) const MAX_PUSHES: usize = 32;

/// Most payload bytes one turn carries (its first push whatever its size):
/// a turn holds its group's row lock while its statements carry their
/// payloads to the server, so this bounds how long other instances' pushes
/// of the group can wait behind it.
pub(crate) const MAX_BYTES: usize = 1 << 20;

type Reply = oneshot::Sender<Result<PushOutcome, StorageError>>;

/// The queues of the groups with pushes in flight here (a group's entry
/// goes when its last push is answered or given up).
#[derive(Default)]
pub(crate) struct Combiner {
    groups: Mutex<HashMap<GroupId, Arc<Queue>>>,
    /// Tickets of queued pushes (to find one's own entry again).
    next_ticket: AtomicU64,
}

#[derive(Default)]
struct Queue {
    waiting: Mutex<VecDeque<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

struct Waiting {
    ticket: u64,
    req: PushRequest,
    reply: Reply,
}

impl Combiner {
    /// Queue `req` and wait until a turn of its group carried it: `apply`
    /// gets the pushes of one turn (at most [`MAX_PUSHES`], [`MAX_BYTES`]
    /// of payload beyond the first, in the order they queued) and must
    /// answer each, in that order. A push the turn it took did not carry
    /// (the caps) takes the next turn too, until it is answered. Dropped
    /// while it waits, the push leaves the queue (it is not stored later
    /// with its stale `now_ms`).
    pub(crate) async fn push<F, Fut>(
        &self,
        req: PushRequest,
        apply: F,
    ) -> Result<PushOutcome, StorageError>
    where
        F: Fn(Vec<PushRequest>) -> Fut,
        Fut: Future<Output = Vec<Result<PushOutcome, StorageError>>>,
    {
        let group = req.group;
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let queued = Queued {
            combiner: self,
            group,
            ticket,
            queue: self.queue(group),
        };
        let queue = &queued.queue;
        let (reply, mut answer) = oneshot::channel();
        lock(&queue.waiting).push_back(Waiting { ticket, req, reply });
        let answered = loop {
            tokio::select! {
                biased;
                answered = &mut answer => break answered,
                _turn = queue.turn.lock() => {
                    let (reqs, replies): (Vec<_>, Vec<_>) = take_turn(queue)
                        .into_iter()
                        .map(|w| (w.req, w.reply))
                        .unzip();
                    if !reqs.is_empty() {
                        let results = apply(reqs).await;
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                }
            }
        };
        drop(queued);
        answered.unwrap_or_else(|_| {
            Err(StorageError::unavailable(
                "the transaction carrying this push was interrupted; it may be stored: retry it",
            ))
        })
    }

    fn queue(&self, group: GroupId) -> Arc<Queue> {
        Arc::clone(lock(&self.groups).entry(group).or_default())
    }

    /// Groups with a queue now (for tests).
    #[cfg(test)]
    pub(crate) fn groups(&self) -> usize {
        lock(&self.groups).len()
    }
}

/// A push's place in its group's queue: when the push is answered or
/// dropped, its entry (if no turn took it) leaves the queue and the queue
/// is forgotten once nobody holds it.
struct Queued<'a> {
    combiner: &'a Combiner,
    group: GroupId,
    ticket: u64,
    queue: Arc<Queue>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        lock(&self.queue.waiting).retain(|w| w.ticket != self.ticket);
        // Forget the group's queue when only the map and this push hold it
        // (under the map's lock: nobody can take it meanwhile).
        let mut groups = lock(&self.combiner.groups);
        if groups
            .get(&self.group)
            .is_some_and(|q| Arc::ptr_eq(q, &self.queue) && Arc::strong_count(q) == 2)
        {
            groups.remove(&self.group);
        }
    }
}

/// The pushes of the next turn, taken off the front of the queue.
fn take_turn(queue: &Queue) -> Vec<Waiting> {
    let mut waiting = lock(&queue.waiting);
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    while let Some(Waiting { req, .. }) = waiting.front() {
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
    use std::sync::atomic::AtomicUsize;
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
                    .push(req(7, id, 10), |reqs| {
                        let (turns, running) = (Arc::clone(&turns), Arc::clone(&running));
                        async move {
                            // One turn of a group at a time.
                            assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            lock(&turns).push(reqs.len());
                            running.fetch_sub(1, Ordering::SeqCst);
                            answers(&reqs)
                        }
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
            let (reply, rx) = oneshot::channel();
            lock(&queue.waiting).push_back(Waiting {
                ticket: 0,
                req: r,
                reply,
            });
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
        let x_once = Mutex::new(Some((x_in, released)));
        let x = tokio::spawn(async move {
            c.push(req(3, 1, 1), |reqs| {
                let (x_in, released) = lock(&x_once).take().expect("one turn");
                async move {
                    let _ = x_in.send(());
                    let _ = released.await;
                    answers(&reqs)
                }
            })
            .await
        });
        x_entered.await.unwrap();
        // A then B queue behind X's turn; A takes the next turn (the turn
        // lock is fair) and carries both, then A is cancelled.
        let (a_in, a_entered) = oneshot::channel::<()>();
        let c = Arc::clone(&combiner);
        let a_once = Mutex::new(Some(a_in));
        let a = tokio::spawn(async move {
            c.push(req(3, 2, 1), |reqs| {
                let a_in = lock(&a_once).take().expect("one turn");
                async move {
                    let _ = a_in.send(());
                    std::future::pending::<()>().await;
                    answers(&reqs)
                }
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

    /// The push that takes the turn may be left out of it (a large push
    /// queued ahead of it fills the turn): it must take the next turn
    /// itself, since nobody else may come to carry it.
    #[tokio::test]
    async fn a_push_left_out_of_the_turn_it_took_takes_the_next() {
        let combiner = Arc::new(Combiner::default());
        let queue = combiner.queue(GroupId([5; 32]));
        let held = queue.turn.lock().await;
        // A large push queued, whose owner has not yet asked for the turn.
        let (reply, large_answer) = oneshot::channel();
        lock(&queue.waiting).push_back(Waiting {
            ticket: u64::MAX,
            req: req(5, 1, MAX_BYTES + 1),
            reply,
        });
        let c = Arc::clone(&combiner);
        let small = tokio::spawn(async move {
            c.push(req(5, 2, 1), |reqs| async move { answers(&reqs) })
                .await
        });
        tokio::task::yield_now().await;
        drop(held);
        let answered = tokio::time::timeout(Duration::from_secs(10), small)
            .await
            .expect("the small push was left in the queue")
            .unwrap()
            .unwrap();
        assert_eq!(answered.head, 2);
        assert_eq!(large_answer.await.unwrap().unwrap().head, 1);
    }

    /// A push dropped while it waits leaves the queue: it is not stored
    /// by a later turn.
    #[tokio::test]
    async fn a_push_dropped_while_it_waits_leaves_the_queue() {
        let combiner = Arc::new(Combiner::default());
        let queue = combiner.queue(GroupId([6; 32]));
        let held = queue.turn.lock().await;
        let c = Arc::clone(&combiner);
        let waiting = tokio::spawn(async move {
            c.push(req(6, 1, 1), |_| async move {
                panic!("a dropped push was carried")
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(lock(&queue.waiting).len(), 1);
        waiting.abort();
        assert!(waiting.await.is_err());
        assert!(lock(&queue.waiting).is_empty());
        drop(held);
        drop(queue);
        combiner
            .push(req(6, 2, 1), |reqs| async move {
                assert_eq!(reqs.len(), 1);
                answers(&reqs)
            })
            .await
            .unwrap();
        assert_eq!(combiner.groups(), 0);
    }
}
