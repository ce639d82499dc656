//! What the attached server still owes the client, message by message.
//!
//! Every message forwarded to the server that the server answers adds an entry; each answer the
//! server sends removes one. This tells the session when the server is truly idle (nothing in
//! flight after the last Sync: only then may it go back to the pool), and which server answers
//! to swallow or reword (those of messages the proxy added, or sent in the place of a client's).

use super::server_names;
use super::statements::deallocate_tag;
use crate::protocol::backend;
use crate::server::maintenance::forgets_prepared_statements;
use crate::server::prepared::PreparedSet;
use bytes::BytesMut;
use std::collections::VecDeque;

/// One answer owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    /// A simple Query or FunctionCall: answered through its ReadyForQuery.
    Query,
    /// A simple Query the proxy sent on the client's behalf (a deferred `BEGIN` the client
    /// already got an answer to): its answers are swallowed, except errors and notices.
    HiddenQuery,
    Sync,
    /// A client Parse; `named` is the server-side hash for proxy-named statements.
    Parse {
        named: Option<u64>,
    },
    /// A client's Parse of the unnamed statement, with the client's key for it (see
    /// `ServerConn::unnamed_owner`): once done, the server's unnamed statement is that
    /// client's; refused, there is none (PostgreSQL drops the old one first); skipped, it is
    /// what it was.
    UnnamedParse(u64),
    /// A Parse the proxy added before a Bind or Describe; its ParseComplete is swallowed.
    InjectedParse(u64),
    /// A Close the proxy added to keep the server's statements under the cap; its
    /// CloseComplete is swallowed.
    InjectedClose(u64),
    Bind,
    /// A client's Bind of a statement that is a `DEALLOCATE` (see `extended_deallocate`).
    DeallocateBind,
    Describe,
    Execute,
    Close,
    /// A client's Close of the portal bound to a `DEALLOCATE`: done, it ends it.
    DeallocateClose,
    /// A client's named Parse of a statement the server has already (under its proxy name).
    /// The server got the same text under a reserved name (`statements::write_stand_in`),
    /// which it completes, refuses (a failed transaction, an object dropped since) or skips
    /// (after an error earlier in a batch) as PostgreSQL would the client's Parse: its answer
    /// is the client's.
    StandInParse,
    /// The answer (ParseComplete, BindComplete, CloseComplete) to a message the proxy added
    /// on its own account, such as the Close behind a `StandInParse`: swallowed.
    Hidden,
    /// The Execute of an extended-protocol `DEALLOCATE` of the client's own names (`all`: of
    /// all of them), answered by the proxy. The server got a stand-in that takes a snapshot
    /// as `DEALLOCATE` does (`statements::write_snapshot_stand_in`): its CommandComplete
    /// becomes the `DEALLOCATE`'s.
    ExtendedDeallocated {
        all: bool,
    },
    /// A message the proxy refuses itself (a Parse that reuses a statement name, a Bind of
    /// another client's unnamed statement). The proxy sent the server a stand-in that fails
    /// in its place, so the server fails the batch (and an open transaction) as PostgreSQL
    /// would have. If the server's error has the SQLSTATE the proxy expects, it is replaced
    /// by the proxy's own wording (kept in `Responses::error`); any other error (a failed
    /// transaction, bad SQL) is PostgreSQL's answer and goes through.
    Refused,
    /// A simple-query `DEALLOCATE` (`all`: of all statements) of the client's own statement
    /// names, answered by the proxy. The server got a stand-in Query in its place
    /// ([`DEALLOCATE_STAND_IN`]), which it runs, refuses (a failed transaction) or skips
    /// (after an error earlier in a batch) as PostgreSQL would the `DEALLOCATE`. Like it, it
    /// takes the transaction's snapshot and drops the unnamed statement. Its RowDescription
    /// is swallowed and its CommandComplete becomes the `DEALLOCATE`'s.
    Deallocated {
        all: bool,
    },
    /// A client's Close of one of its named statements. The server got a Close of a name that
    /// does not exist ([`CLOSE_NOTHING`]): its CloseComplete is the client's, and if the
    /// server skips it (after an error), the client's statement was not closed either.
    ClosedName,
    /// Owes nothing: where the client ended a COPY (CopyDone or CopyFail) behind a Query or
    /// Execute not yet answered. If that turns out to be a COPY FROM STDIN, the Syncs sent between
    /// it and this mark reach the server while it copies (it ignores them), those after it
    /// do not. Never at the head of the queue.
    CopyEnd,
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Swallow,
    /// Swallow it and send the client the error of a `Refused` instead
    /// ([`Responses::take_refusal`]).
    Replace,
    /// Swallow it and send the client a CommandComplete with this command tag instead.
    Complete(&'static str),
    /// Swallow it (a `26000` naming the proxy's name for a statement) and send the client the
    /// error the server gave that statement's Parse instead ([`PreparedSet::refusal_for`]).
    Reword,
}

/// The stand-in of a `DEALLOCATE` the proxy answers (see `Owed::Deallocated`): a simple Query
/// of `statements::SNAPSHOT_QUERY`, which takes a snapshot as `DEALLOCATE` does (after it,
/// `SET TRANSACTION ISOLATION LEVEL` is too late: `25001`).
pub const DEALLOCATE_STAND_IN: &[u8] = b"Q\0\0\0\x17SELECT WHERE false\0";

/// A Close of a statement that does not exist: always answered with CloseComplete, unless
/// skipped after an error (see `Owed::ClosedName`).
pub const CLOSE_NOTHING: &[u8] = b"C\0\0\0\x1eSswitchyard: refused here\0";

/// A Describe of a statement that does not exist, sent to the server in place of a Bind or
/// Describe the proxy refuses: the server fails there with 26000 (also in a failed
/// transaction), as it would have with the refused message.
pub const REFUSED: &[u8] = b"D\0\0\0\x1eSswitchyard: refused here\0";

/// The answers owed by one attached server connection.
#[derive(Debug)]
pub struct Responses {
    queue: VecDeque<Owed>,
    /// After an error in the extended protocol the server ignores everything until Sync.
    server_skipping: bool,
    /// Bytes still to come of a server message already partly forwarded.
    pub partial: usize,
    /// The last thing the server sent was ReadyForQuery, and nothing was sent to it since.
    at_sync: bool,
    /// The transaction status of the last ReadyForQuery.
    pub tx_status: u8,
    /// The server is in COPY FROM STDIN and ignores Sync and Flush until the copy ends.
    copy_in: bool,
    /// The ErrorResponses of the queued `Refused`, in order, and their SQLSTATEs.
    error: BytesMut,
    refusal_codes: VecDeque<&'static str>,
    /// Outcomes of the client's named Parses and Closes, in order: whether the server did
    /// them (false when it refused or skipped them). The session drains them.
    pub name_outcomes: VecDeque<bool>,
    /// Who holds the server's unnamed statement now, as the answers to `UnnamedParse` and
    /// `StandInParse` tell (0: no news); the relay hands it to the server connection.
    pub unnamed_owner_update: u64,
    /// The server completed a `LISTEN`: it now holds session state that notifications need.
    pub listened: bool,
    /// The server completed the client's `DISCARD ALL` (or a `DEALLOCATE ALL` the proxy did not
    /// answer): PostgreSQL forgets the session's prepared statements. How many entries of
    /// `name_outcomes` came before it; the session acts on it.
    pub discarded: Option<u32>,
    /// Counts the server's ReadyForQuery messages and the servers attached (wrapping): when
    /// it moves, a request was answered in full or a new server took over. `query_timeout_ms`
    /// gives each request its time from there.
    pub progress: u16,
    /// Moves when the client's portals are gone: at a ReadyForQuery outside a transaction
    /// block, and when another server is attached (wrapping; one byte, as a portal is only
    /// looked up by it between its Bind and its Execute).
    pub portal_epoch: u8,
    /// The `portal_epoch` in which the server completed the last `DeallocateBind` (none: it
    /// failed, or there was none). Taken when its answer comes, not when it is sent: a
    /// pipelined Bind goes out before the answers that end earlier transactions.
    pub deallocate_bound: Option<u8>,
}

impl Default for Responses {
    fn default() -> Self {
        Responses {
            queue: VecDeque::with_capacity(8),
            server_skipping: false,
            partial: 0,
            at_sync: true,
            tx_status: b'I',
            copy_in: false,
            error: BytesMut::new(),
            refusal_codes: VecDeque::new(),
            name_outcomes: VecDeque::new(),
            unnamed_owner_update: 0,
            listened: false,
            discarded: None,
            progress: 0,
            portal_epoch: 0,
            deallocate_bound: None,
        }
    }
}

impl Responses {
    /// Starts over for a newly attached server, keeping the queue's memory.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.server_skipping = false;
        self.partial = 0;
        self.at_sync = true;
        self.tx_status = b'I';
        self.copy_in = false;
        self.error.clear();
        self.refusal_codes.clear();
        self.name_outcomes.clear();
        self.unnamed_owner_update = 0;
        self.listened = false;
        self.discarded = None;
        self.progress = self.progress.wrapping_add(1);
        self.portal_epoch = self.portal_epoch.wrapping_add(1);
    }

    /// Records a refusal: the proxy sent a stand-in in place of the client's message, and the
    /// client gets this error in its place among the server's answers.
    pub fn push_refusal(&mut self, code: &'static str, message: &str) {
        self.push_refusal_of(code, code, message);
    }

    /// As [`push_refusal`](Self::push_refusal), for a stand-in that fails with `expected`
    /// where the client gets `code`.
    pub fn push_refusal_of(&mut self, expected: &'static str, code: &'static str, message: &str) {
        if self.server_skipping {
            return; // the server skips the stand-in, as PostgreSQL the refused message
        }
        backend::error(&mut self.error, backend::Severity::Error, code, message);
        self.refusal_codes.push_back(expected);
        self.push(Owed::Refused);
    }

    /// The error of the refusal the server just failed on (see [`Verdict::Replace`]).
    pub fn take_refusal(&mut self, out: &mut BytesMut) {
        let first = self.drop_refusal();
        out.extend_from_slice(&first);
    }

    /// Takes the error of the oldest queued refusal.
    fn drop_refusal(&mut self) -> BytesMut {
        self.refusal_codes.pop_front();
        let len = match self.error.get(1..5) {
            Some(l) => 1 + u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize,
            None => 0,
        };
        self.error.split_to(len.min(self.error.len()))
    }

    /// Whether the server ignores extended-protocol messages until the next Sync.
    pub fn skipping(&self) -> bool {
        self.server_skipping
    }

    /// Records that a message went to the server.
    pub fn sent(&mut self) {
        self.at_sync = false;
    }

    /// Records an answer owed for a message just forwarded (or answered by the proxy).
    pub fn push(&mut self, owed: Owed) {
        if self.server_skipping {
            if owed != Owed::Sync {
                return;
            }
            // The server skips up to this Sync and reads what comes after it.
            self.server_skipping = false;
        }
        if self.copy_in && owed == Owed::Sync {
            // PostgreSQL ignores Sync during COPY FROM STDIN (libraries send one regardless).
            return;
        }
        self.queue.push_back(owed);
    }

    /// The client ended its COPY data with CopyDone or CopyFail (possibly before the server's
    /// CopyInResponse came: a client may send the data right behind the COPY).
    pub fn client_ended_copy(&mut self) {
        self.copy_in = false;
        if self
            .queue
            .iter()
            .any(|o| matches!(o, Owed::Query | Owed::Execute))
        {
            self.queue.push_back(Owed::CopyEnd);
        }
    }

    /// Nothing owed and the server at a ReadyForQuery: the connection holds no request.
    pub fn quiet(&self) -> bool {
        self.queue.is_empty() && self.at_sync && self.partial == 0 && !self.server_skipping
    }

    /// Quiet and outside a transaction: the connection may go back to the pool.
    pub fn releasable(&self) -> bool {
        self.quiet() && self.tx_status == b'I'
    }

    /// How many ReadyForQuery the client still waits for.
    pub fn ready_owed(&self) -> usize {
        self.queue.iter().filter(|o| is_query_or_sync(**o)).count()
    }

    /// Every answer owed has come, or the server waits for COPY data (which is all it will
    /// take): a client that broke the protocol can be closed without losing an answer.
    pub fn settled(&self) -> bool {
        self.copy_in || (self.queue.is_empty() && self.partial == 0)
    }

    /// A ReadyForQuery is owed that the server sends without more from the client (it is not
    /// waiting for COPY data): holding the client's next messages until it comes cannot stall.
    pub fn ready_coming(&self) -> bool {
        // Only a Query or a Sync makes the server send (and flush) its answers.
        !self.copy_in && self.queue.iter().any(|o| is_query_or_sync(*o))
    }

    /// The server is in COPY FROM STDIN: it takes only COPY messages (Sync and Flush are
    /// ignored, anything else ends the session).
    pub fn copying_in(&self) -> bool {
        self.copy_in
    }

    /// Whether a Parse of the unnamed statement by this client is still unanswered.
    pub fn unnamed_parse_pending(&self) -> bool {
        self.queue
            .iter()
            .any(|o| matches!(o, Owed::UnnamedParse(_)))
    }

    /// The owner keys of this client's unanswered Parses of the unnamed statement.
    pub fn unnamed_parses_pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.queue.iter().filter_map(|o| match o {
            Owed::UnnamedParse(key) => Some(*key),
            _ => None,
        })
    }

    /// Takes the head of the queue, and the `CopyEnd` marks it uncovers (they owe nothing).
    fn pop_front(&mut self) -> Option<Owed> {
        let head = self.queue.pop_front();
        while self.queue.front() == Some(&Owed::CopyEnd) {
            self.queue.pop_front();
        }
        head
    }

    fn pop_if(&mut self, want: impl Fn(Owed) -> bool) -> Option<Owed> {
        match self.queue.front() {
            Some(&o) if want(o) => self.pop_front(),
            _ => None,
        }
    }

    /// Drops what the server will skip after an error, up to the next Sync.
    fn skip_to_sync(&mut self, prepared: &mut PreparedSet) {
        while let Some(&o) = self.queue.front() {
            if o == Owed::Sync {
                return;
            }
            self.pop_front();
            self.unanswered(o, prepared);
        }
        self.server_skipping = true;
    }

    /// Accounts for one server message (`body` is empty when not needed or not yet read).
    pub fn on_server_message(
        &mut self,
        tag: u8,
        body: &[u8],
        prepared: &mut PreparedSet,
    ) -> Verdict {
        if self.queue.front() == Some(&Owed::HiddenQuery) {
            if tag == b'Z' {
                self.pop_front();
                self.tx_status = body.first().copied().unwrap_or(b'I');
            }
            return match tag {
                b'E' | b'N' => Verdict::Forward,
                _ => Verdict::Swallow,
            };
        }
        match tag {
            b'Z' => {
                while let Some(o) = self.pop_front() {
                    if is_query_or_sync(o) {
                        break;
                    }
                    self.unanswered(o, prepared);
                }
                // At a ReadyForQuery only if nothing was sent after what it answers: a Parse,
                // Bind or Execute sent behind a Query runs in a transaction that only the
                // client's next Sync ends.
                self.at_sync = self.queue.is_empty();
                self.server_skipping = false;
                self.tx_status = body.first().copied().unwrap_or(b'I');
                self.progress = self.progress.wrapping_add(1);
                if self.tx_status == b'I' {
                    self.portal_epoch = self.portal_epoch.wrapping_add(1);
                }
            }
            b'E' => match self
                .queue
                .front()
                .copied()
                .inspect(|_| self.copy_in = false)
            {
                None | Some(Owed::Query | Owed::Deallocated { .. }) => {}
                Some(Owed::Refused) => {
                    self.pop_front();
                    self.skip_to_sync(prepared);
                    let expected = self.refusal_codes.front().copied().unwrap_or_default();
                    if has_code(body, expected) {
                        return Verdict::Replace;
                    }
                    // PostgreSQL's own answer to the refused message (see `Owed::Refused`).
                    self.drop_refusal();
                }
                Some(o) => {
                    self.pop_front();
                    if matches!(o, Owed::UnnamedParse(_)) {
                        // PostgreSQL dropped the old unnamed statement before it failed.
                        self.unnamed_owner_update = u64::MAX;
                    }
                    if let Owed::InjectedParse(h) = o {
                        prepared.refused(h, backend::whole(b'E', body));
                    }
                    let reworded = matches!(o, Owed::Bind | Owed::Describe)
                        && has_code(body, "26000")
                        && backend::error_field(body, b'M')
                            .and_then(server_names::named_statement)
                            .is_some_and(|(_, h)| prepared.refusal_for(h).is_some());
                    self.unanswered(o, prepared);
                    self.skip_to_sync(prepared);
                    if reworded {
                        return Verdict::Reword;
                    }
                }
            },
            b'G' => {
                // COPY FROM STDIN began. Syncs already sent right after the COPY reach the
                // server while it copies, so it ignores them: they owe nothing. A client that
                // ended the copy already (a CopyEnd mark follows) has it end as soon as the
                // server reads that: the Syncs after the mark are answered.
                let head = usize::from(!self.queue.is_empty());
                while self.queue.get(head) == Some(&Owed::Sync) {
                    self.queue.remove(head);
                }
                if self.queue.get(head) == Some(&Owed::CopyEnd) {
                    self.queue.remove(head);
                } else {
                    self.copy_in = true;
                }
            }
            b'1' => match self.pop_if(|o| {
                matches!(
                    o,
                    Owed::Parse { .. }
                        | Owed::InjectedParse(_)
                        | Owed::StandInParse
                        | Owed::UnnamedParse(_)
                        | Owed::Hidden
                )
            }) {
                Some(Owed::InjectedParse(_) | Owed::Hidden) => return Verdict::Swallow,
                Some(Owed::Parse { named: Some(_) }) => self.name_outcomes.push_back(true),
                Some(Owed::StandInParse) => self.name_outcomes.push_back(true),
                Some(Owed::UnnamedParse(owner)) => self.unnamed_owner_update = owner,
                _ => {}
            },
            b'2' if self.queue.front() == Some(&Owed::Hidden) => {
                self.pop_front();
                return Verdict::Swallow;
            }
            b'2' => {
                let bound = self.pop_if(|o| matches!(o, Owed::Bind | Owed::DeallocateBind));
                if bound == Some(Owed::DeallocateBind) {
                    self.deallocate_bound = Some(self.portal_epoch);
                }
            }
            b'3' => match self.pop_if(|o| {
                matches!(
                    o,
                    Owed::Close
                        | Owed::DeallocateClose
                        | Owed::InjectedClose(_)
                        | Owed::ClosedName
                        | Owed::Hidden
                )
            }) {
                Some(Owed::InjectedClose(_) | Owed::Hidden) => return Verdict::Swallow,
                Some(Owed::ClosedName) => self.name_outcomes.push_back(true),
                Some(Owed::DeallocateClose) => self.deallocate_bound = None,
                _ => {}
            },
            b'T' | b'C' if matches!(self.queue.front(), Some(Owed::Deallocated { .. })) => {
                let all = matches!(self.queue.front(), Some(Owed::Deallocated { all: true }));
                return match tag {
                    b'T' => Verdict::Swallow,
                    _ => Verdict::Complete(deallocate_tag(all)),
                };
            }
            b'T' | b'n' => {
                self.pop_if(|o| o == Owed::Describe);
            }
            b'C' if matches!(self.queue.front(), Some(Owed::ExtendedDeallocated { .. })) => {
                let all = self.pop_front() == Some(Owed::ExtendedDeallocated { all: true });
                return Verdict::Complete(deallocate_tag(all));
            }
            b'C' | b'I' | b's' => {
                self.copy_in = false;
                if tag == b'C' {
                    if forgets_prepared_statements(body) {
                        // Parses still owed were sent after it: those statements will exist.
                        prepared.clear();
                        for o in &self.queue {
                            if let Owed::Parse { named: Some(h) } | Owed::InjectedParse(h) = *o {
                                prepared.add(h);
                            }
                        }
                        self.discarded = Some(self.name_outcomes.len() as u32);
                    }
                    self.listened |= body.starts_with(b"LISTEN\0");
                }
                self.pop_if(|o| o == Owed::Execute);
            }
            _ => {}
        }
        Verdict::Forward
    }
}

/// Whether the server ends its answer to `o` with a ReadyForQuery.
fn is_query_or_sync(o: Owed) -> bool {
    matches!(o, Owed::Query | Owed::Sync | Owed::Deallocated { .. })
}

/// Whether an ErrorResponse body carries this SQLSTATE.
fn has_code(body: &[u8], code: &str) -> bool {
    body.split(|&b| b == 0)
        .any(|field| field.first() == Some(&b'C') && &field[1..] == code.as_bytes())
}

impl Responses {
    /// A message the server refused or skipped (after an error): a Parse that did not happen
    /// is not prepared there and, for a client's named Parse, its name does not exist; a
    /// Close that did not happen leaves its statement.
    fn unanswered(&mut self, o: Owed, prepared: &mut PreparedSet) {
        match o {
            Owed::Parse { named: Some(h) } => {
                prepared.remove(h);
                self.name_outcomes.push_back(false);
            }
            Owed::StandInParse => self.name_outcomes.push_back(false),
            Owed::InjectedParse(h) => prepared.remove(h),
            Owed::InjectedClose(h) => prepared.restore(h),
            Owed::ClosedName => self.name_outcomes.push_back(false),
            Owed::DeallocateBind => self.deallocate_bound = None,
            // The server skipped the stand-in, as PostgreSQL would the refused message.
            Owed::Refused => {
                self.drop_refusal();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(hashes: &[u64]) -> PreparedSet {
        let mut p = PreparedSet::default();
        for &h in hashes {
            p.add(h);
        }
        p
    }

    fn run(r: &mut Responses, tags: &[u8], prepared: &mut PreparedSet) -> Vec<Verdict> {
        tags.iter()
            .map(|&t| {
                let body: &[u8] = if t == b'Z' { b"I" } else { b"" };
                r.on_server_message(t, body, prepared)
            })
            .collect()
    }

    #[test]
    fn extended_cycle_becomes_releasable_at_ready_for_query() {
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        for o in [
            Owed::Parse { named: None },
            Owed::Bind,
            Owed::Execute,
            Owed::Sync,
        ] {
            r.push(o);
        }
        assert!(!r.releasable());
        run(&mut r, b"12DC", &mut p);
        assert!(!r.releasable());
        run(&mut r, b"Z", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn pipelined_syncs_keep_the_server_until_the_last() {
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        for o in [
            Owed::Bind,
            Owed::Execute,
            Owed::Sync,
            Owed::Bind,
            Owed::Execute,
            Owed::Sync,
        ] {
            r.push(o);
        }
        run(&mut r, b"2CZ", &mut p);
        assert!(!r.releasable(), "a second Sync is still in flight");
        assert_eq!(r.ready_owed(), 1);
        run(&mut r, b"2CZ", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn injected_parse_complete_is_swallowed() {
        let mut r = Responses::default();
        let mut p = prepared(&[7]);
        r.push(Owed::InjectedParse(7));
        r.push(Owed::Bind);
        assert_eq!(
            run(&mut r, b"12", &mut p),
            vec![Verdict::Swallow, Verdict::Forward]
        );
    }

    #[test]
    fn error_skips_to_sync_and_forgets_parses() {
        let mut r = Responses::default();
        let mut p = prepared(&[1, 2]);
        r.sent();
        for o in [
            Owed::Parse { named: Some(1) },
            Owed::InjectedParse(2),
            Owed::Bind,
            Owed::StandInParse,
            Owed::Hidden,
            Owed::Sync,
        ] {
            r.push(o);
        }
        run(&mut r, b"E", &mut p);
        assert!(p.is_empty(), "neither parse happened");
        assert_eq!(r.name_outcomes, [false, false], "nor the stand-in");
        assert_eq!(r.ready_owed(), 1);
        run(&mut r, b"Z", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn an_injected_close_is_swallowed_or_undone() {
        let mut r = Responses::default();
        let mut p = prepared(&[2]);
        r.sent();
        r.push(Owed::InjectedClose(1));
        r.push(Owed::Parse { named: Some(2) });
        r.push(Owed::Sync);
        assert_eq!(run(&mut r, b"3", &mut p), vec![Verdict::Swallow]);
        // A Close the server skipped after an error leaves the statement there.
        let mut r = Responses::default();
        let mut p = prepared(&[2]);
        r.sent();
        r.push(Owed::Bind);
        r.push(Owed::InjectedClose(1));
        r.push(Owed::Sync);
        run(&mut r, b"EZ", &mut p);
        assert!(p.contains(1) && p.contains(2));
    }

    #[test]
    fn error_before_the_client_sent_sync_skips_later_messages() {
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        r.push(Owed::Bind);
        run(&mut r, b"E", &mut p);
        assert!(r.skipping());
        r.push(Owed::Execute);
        r.push(Owed::Sync);
        assert_eq!(r.ready_owed(), 1);
        run(&mut r, b"Z", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn syncs_sent_into_a_copy_in_owe_nothing() {
        // tokio-postgres: Bind, Execute, Sync; then CopyData, CopyDone, Sync.
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        for o in [Owed::Bind, Owed::Execute, Owed::Sync] {
            r.push(o);
        }
        run(&mut r, b"2G", &mut p);
        r.push(Owed::Sync); // a Sync sent while copying is ignored too
        r.client_ended_copy();
        r.push(Owed::Sync);
        assert_eq!(r.ready_owed(), 1);
        run(&mut r, b"CZ", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn a_refusal_rewords_the_expected_error_and_lets_any_other_through() {
        for stand_in in [REFUSED, CLOSE_NOTHING, DEALLOCATE_STAND_IN] {
            let len = u32::from_be_bytes(stand_in[1..5].try_into().unwrap()) as usize;
            assert_eq!(len + 1, stand_in.len());
        }
        let text = &DEALLOCATE_STAND_IN[5..DEALLOCATE_STAND_IN.len() - 1];
        assert_eq!(text, super::super::statements::SNAPSHOT_QUERY);
        let mut p = PreparedSet::default();
        let mut r = Responses::default();
        r.sent();
        r.push_refusal("42P05", "prepared statement \"a\" already exists");
        r.push(Owed::Bind);
        r.push(Owed::Sync);
        let error = b"SERROR\0VERROR\0C42P05\0Mprepared statement \"S_1\" already exists\0\0";
        assert_eq!(r.on_server_message(b'E', error, &mut p), Verdict::Replace);
        let mut out = BytesMut::new();
        r.take_refusal(&mut out);
        assert!(out.windows(6).any(|w| w == b"C42P05"), "{out:?}");
        assert_eq!(r.ready_owed(), 1);
        run(&mut r, b"Z", &mut p);
        assert!(r.releasable());
        // In a failed transaction PostgreSQL answers the Parse with 25P02 before it looks at
        // the name, and so does the server: that error goes to the client as it is.
        r.sent();
        r.push_refusal("42P05", "prepared statement \"a\" already exists");
        r.push(Owed::Sync);
        let aborted = b"SERROR\0VERROR\0C25P02\0Mcurrent transaction is aborted\0\0";
        assert_eq!(r.on_server_message(b'E', aborted, &mut p), Verdict::Forward);
        let mut out = BytesMut::new();
        r.take_refusal(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn extended_messages_behind_a_query_keep_the_server_until_their_sync() {
        // Query, then Parse, Bind, Execute without a Sync: once all are answered the server
        // is inside the transaction the Execute began, and must not go back to the pool.
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        for o in [
            Owed::Query,
            Owed::Parse { named: None },
            Owed::Bind,
            Owed::Execute,
        ] {
            r.push(o);
        }
        run(&mut r, b"TDCZ12DC", &mut p);
        assert!(!r.releasable());
        r.push(Owed::Sync);
        run(&mut r, b"Z", &mut p);
        assert!(r.releasable());
        // A DEALLOCATE the proxy answers itself, behind a Query: the server's answer to its
        // stand-in becomes the client's.
        r.push(Owed::Query);
        r.push(Owed::Deallocated { all: false });
        assert_eq!(r.ready_owed(), 2);
        run(&mut r, b"CZ", &mut p);
        assert_eq!(r.on_server_message(b'T', b"\0\0", &mut p), Verdict::Swallow);
        assert_eq!(
            r.on_server_message(b'C', b"SELECT 0\0", &mut p),
            Verdict::Complete("DEALLOCATE")
        );
        assert!(!r.releasable());
        run(&mut r, b"Z", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn a_copy_ended_before_the_servers_copy_in_response_owes_the_later_syncs() {
        // Query "COPY .. FROM STDIN", CopyData, CopyDone, Sync, Sync, Query, all at once: the
        // server is out of the copy when it reads the Syncs, so it answers them.
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        r.push(Owed::Query);
        r.client_ended_copy();
        for o in [Owed::Sync, Owed::Sync, Owed::Query] {
            r.push(o);
        }
        run(&mut r, b"GCZ", &mut p);
        assert_eq!(r.ready_owed(), 3);
        run(&mut r, b"ZZ", &mut p);
        assert!(!r.releasable());
        run(&mut r, b"TDCZ", &mut p);
        assert!(r.releasable());
        // A Sync sent before the CopyDone reaches the server while it copies: ignored.
        let mut r = Responses::default();
        r.sent();
        r.push(Owed::Query);
        r.push(Owed::Sync);
        r.client_ended_copy();
        r.push(Owed::Sync);
        run(&mut r, b"GCZ", &mut p);
        assert_eq!(r.ready_owed(), 1);
        run(&mut r, b"Z", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn a_discard_counts_the_name_outcomes_that_came_before_it() {
        // Parse s0, Sync, Query DISCARD ALL, Parse s1, Sync, answered in one read: s1 was
        // parsed after the DISCARD and survives it.
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        for o in [
            Owed::Parse { named: Some(1) },
            Owed::Sync,
            Owed::Query,
            Owed::Parse { named: Some(2) },
            Owed::Sync,
        ] {
            r.push(o);
        }
        run(&mut r, b"1Z", &mut p);
        r.on_server_message(b'C', b"DISCARD ALL\0", &mut p);
        run(&mut r, b"Z1Z", &mut p);
        assert_eq!(r.discarded, Some(1));
        assert_eq!(r.name_outcomes.len(), 2);
        assert!(p.contains(2) && !p.contains(1));
    }

    #[test]
    fn a_stand_in_answers_for_the_client_and_its_close_is_swallowed() {
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        for o in [Owed::StandInParse, Owed::Hidden, Owed::Sync] {
            r.push(o);
        }
        assert_eq!(r.on_server_message(b'1', b"", &mut p), Verdict::Forward);
        assert_eq!(r.on_server_message(b'3', b"", &mut p), Verdict::Swallow);
        assert_eq!(r.name_outcomes, [true]);
        assert_eq!(
            r.unnamed_owner_update, 0,
            "the unnamed statement is untouched"
        );
        run(&mut r, b"Z", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn what_follows_the_sync_after_an_error_is_not_skipped() {
        // Bind, Execute, Flush; the Bind fails; the client then sends Sync, Parse, Sync.
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        r.push(Owed::Bind);
        r.push(Owed::Execute);
        run(&mut r, b"E", &mut p);
        assert!(r.skipping(), "the server skips until the client's Sync");
        r.push(Owed::Execute);
        assert_eq!(r.ready_owed(), 0, "skipped: nothing owed");
        r.push(Owed::Sync);
        assert!(!r.skipping(), "what follows the Sync is read by the server");
        r.push(Owed::Parse { named: None });
        r.push(Owed::Sync);
        assert_eq!(r.ready_owed(), 2);
        run(&mut r, b"Z1Z", &mut p);
        assert!(r.releasable());
    }

    #[test]
    fn a_completed_listen_is_noticed_and_unlisten_is_not_one() {
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        for tag in [&b"UNLISTEN\0"[..], b"SELECT 1\0", b"NOTIFY\0"] {
            r.push(Owed::Query);
            r.on_server_message(b'C', tag, &mut p);
            r.on_server_message(b'Z', b"I", &mut p);
        }
        assert!(!r.listened);
        r.push(Owed::Query);
        r.on_server_message(b'C', b"LISTEN\0", &mut p);
        r.on_server_message(b'Z', b"I", &mut p);
        assert!(r.listened && r.releasable(), "idle, and listening");
        r.reset();
        assert!(!r.listened, "a newly attached server listens for nobody");
    }

    #[test]
    fn a_hidden_query_is_answered_to_nobody() {
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        r.push(Owed::HiddenQuery);
        r.push(Owed::Query);
        assert_eq!(r.ready_owed(), 1);
        let hidden = [
            r.on_server_message(b'C', b"BEGIN\0", &mut p),
            r.on_server_message(b'N', b"", &mut p),
            r.on_server_message(b'Z', b"T", &mut p),
        ];
        assert_eq!(
            hidden,
            [Verdict::Swallow, Verdict::Forward, Verdict::Swallow]
        );
        assert!(!r.quiet());
        assert_eq!(
            run(&mut r, b"TDC", &mut p),
            vec![Verdict::Forward, Verdict::Forward, Verdict::Forward]
        );
        assert_eq!(r.on_server_message(b'Z', b"T", &mut p), Verdict::Forward);
        assert!(r.quiet() && !r.releasable(), "inside the transaction");
    }

    #[test]
    fn errors_inside_a_simple_query_do_not_skip() {
        let mut r = Responses::default();
        let mut p = PreparedSet::default();
        r.sent();
        r.push(Owed::Query);
        run(&mut r, b"TDCE", &mut p);
        assert!(!r.skipping());
        let z = r.on_server_message(b'Z', b"E", &mut p);
        assert_eq!(z, Verdict::Forward);
        assert!(r.quiet());
        assert!(!r.releasable(), "failed transaction stays pinned");
    }
}
