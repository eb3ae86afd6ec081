//! The ledger service: durable entries and balances in redb, and the in-memory books
//! that reservations are taken from.

use super::{MICRO, to_credits};
use crate::http::ApiError;
use crate::store::{Class, Reader, Store, StoreError, Table, TimedKey, WriteTx, now_ms};
use actix_web::http::StatusCode;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};
use utoipa::ToSchema;

/// Keyed by `account / time (big-endian) / 4 random bytes`: an account's entries are
/// one range, oldest first (also how the retention sweep finds expired ones).
const ENTRIES: Table<Vec<u8>, Entry> = Table::new("ledger", Class::Billing);
/// Balance of each account, in micro-credits.
const BALANCES: Table<String, i64> = Table::new("balances", Class::Billing);
/// Micro-credits spent through each API key, for per-key budgets.
const KEY_SPEND: Table<String, i64> = Table::new("key_spend", Class::Credentials);

/// Why credits moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits given by an admin.
    Grant,
    /// A request's cost.
    Usage,
    /// Credits given back.
    Refund,
    /// Credits bought (recorded by an admin).
    Purchase,
    /// A correction by an admin, either way.
    Adjustment,
}

/// One ledger entry, never changed once written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    pub account: String,
    pub kind: EntryKind,
    /// Micro-credits, negative when spent.
    pub amount: i64,
    /// The account's balance right after this entry.
    pub balance_after: i64,
    pub key: Option<String>,
    pub model: Option<String>,
    /// The usage record this entry pays for.
    pub usage: Option<String>,
    pub note: String,
    /// The admin who made a grant or adjustment.
    pub actor: Option<String>,
    pub at_ms: u64,
}

/// One page of `account`'s ledger entries for an export, oldest first.
pub fn export_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::of_owner(
        r,
        &ENTRIES,
        account,
        after,
        limit,
        super::routes::EntryView::from,
    )
}

/// What an entry says besides its amount: owned (`Posting`) or borrowed from whoever
/// writes it (`Posting<&str>`).
#[derive(Clone, Debug, Default)]
pub struct Posting<S = String> {
    pub key: Option<S>,
    pub model: Option<S>,
    pub usage: Option<S>,
    pub note: S,
    pub actor: Option<S>,
    /// When it happened, if not when it is written: a request's charge is written in
    /// the background after the request was answered, and dated by the answer.
    pub at_ms: Option<u64>,
}

impl Posting {
    /// The same posting, borrowed.
    pub fn borrowed(&self) -> Posting<&str> {
        Posting {
            key: self.key.as_deref(),
            model: self.model.as_deref(),
            usage: self.usage.as_deref(),
            note: &self.note,
            actor: self.actor.as_deref(),
            at_ms: self.at_ms,
        }
    }
}

/// A request's side of its charge, settled on the store's writer thread: what the
/// entry says and what is written with it, in the same transaction. Built from the
/// request's own parts there, so the request thread copies nothing for it.
pub trait Charge: Send + 'static {
    /// What the entry says, for the charge to `account` through the API key `key`;
    /// called before the entry is written, once per attempt of the transaction.
    fn posting<'a>(
        &'a mut self,
        account: &str,
        key: Option<&'a str>,
    ) -> Result<Posting<&'a str>, StoreError>;
    /// Writes what goes with the entry (`None` for a free request) for `account` and
    /// the API key `key` charged.
    fn write(
        &mut self,
        tx: &WriteTx<'_>,
        account: &str,
        key: Option<&str>,
        entry: Option<&Entry>,
    ) -> Result<(), StoreError>;
}

/// An API key's spending limit, checked with every reservation made through it.
#[derive(Clone, Copy, Debug)]
pub struct KeyLimit<'a> {
    pub id: &'a str,
    /// Micro-credits the key may spend in all; `None` for no limit.
    pub budget: Option<i64>,
}

/// What can go wrong with credits.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "not enough credits: this request may cost up to {needed} credits and {available} are available; ask an admin for a grant (for chat, a lower max_tokens reserves less)"
    )]
    Insufficient { needed: f64, available: f64 },
    #[error(
        "this API key's credit budget of {budget} credits is spent; raise the budget under API keys or use another key"
    )]
    KeyBudget { budget: f64 },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        let msg = e.to_string();
        match e {
            LedgerError::Insufficient { .. } => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_credits", msg)
            }
            LedgerError::KeyBudget { .. } => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "key_budget_exhausted", msg)
            }
            LedgerError::Invalid(_) => ApiError::bad_request("invalid_field", msg),
            LedgerError::Store(e) => e.into(),
        }
    }
}

#[derive(Default)]
struct Book {
    /// Durable balance plus the charges whose commit is under way.
    balance: i64,
    /// Held by requests in flight.
    reserved: i64,
}

#[derive(Default)]
struct KeyBook {
    spent: i64,
    reserved: i64,
}

#[derive(Default)]
struct Books {
    accounts: HashMap<String, Book>,
    keys: HashMap<String, KeyBook>,
}

/// The ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
    books: Arc<Mutex<Books>>,
}

/// Credits held for one request. Settle it with the actual cost; dropping it unsettled
/// gives everything back.
pub struct Hold {
    ledger: Ledger,
    /// Shared, not copied, with the write that settles the hold.
    account: Arc<str>,
    key: Option<Arc<str>>,
    amount: i64,
    open: bool,
}

/// The book of `name`, opened on first use; the name is copied only then.
fn book_of<'a, B: Default>(books: &'a mut HashMap<String, B>, name: &str) -> &'a mut B {
    books.entry_ref(name).or_default()
}

/// A posting made by hand (an admin's negative adjustment): the audit log records it
/// with the entry.
struct ByHand(Posting);

impl Charge for ByHand {
    fn posting<'a>(
        &'a mut self,
        _: &str,
        _: Option<&'a str>,
    ) -> Result<Posting<&'a str>, StoreError> {
        Ok(self.0.borrowed())
    }

    fn write(
        &mut self,
        tx: &WriteTx<'_>,
        _: &str,
        _: Option<&str>,
        entry: Option<&Entry>,
    ) -> Result<(), StoreError> {
        entry.map_or(Ok(()), |e| record_posting(tx, e))
    }
}

/// Writes one entry and the balance it leaves, refusing to go below zero.
fn post(
    tx: &WriteTx<'_>,
    account: &str,
    kind: EntryKind,
    amount: i64,
    posting: &Posting<&str>,
) -> Result<Entry, LedgerError> {
    let at_ms = posting.at_ms.unwrap_or_else(now_ms);
    let balance = tx.get(&BALANCES, account)?.unwrap_or(0);
    let after = balance
        .checked_add(amount)
        .ok_or_else(|| LedgerError::Invalid("the amount is too large".into()))?;
    if after < 0 {
        return Err(LedgerError::Insufficient {
            needed: to_credits(-amount),
            available: to_credits(balance),
        });
    }
    let TimedKey { key, id, .. } = TimedKey::new(account, at_ms)?;
    let entry = Entry {
        id,
        account: account.to_string(),
        kind,
        amount,
        balance_after: after,
        key: posting.key.map(str::to_string),
        model: posting.model.map(str::to_string),
        usage: posting.usage.map(str::to_string),
        note: posting.note.to_string(),
        actor: posting.actor.map(str::to_string),
        at_ms,
    };
    tx.insert(&ENTRIES, &key, &entry)?;
    // A batch of charges to one account or key stores its balance and spend once.
    tx.insert_last(&BALANCES, account, &after)?;
    if kind == EntryKind::Usage
        && let Some(k) = posting.key
    {
        let spent = tx.get(&KEY_SPEND, k)?.unwrap_or(0);
        tx.insert_last(&KEY_SPEND, k, &(spent - amount))?;
    }
    Ok(entry)
}

/// Hand-made postings go to the audit log with the change itself.
fn record_posting(tx: &WriteTx<'_>, entry: &Entry) -> Result<(), StoreError> {
    let detail = format!(
        "{:?} of {} credits: {}",
        entry.kind,
        to_credits(entry.amount),
        entry.note
    );
    crate::audit::record(
        tx,
        entry.at_ms,
        entry.actor.as_deref(),
        "credits_posted",
        Some(&entry.account),
        &detail,
    )
}

/// The tables of this capability and their classes.
pub const TABLES: [crate::store::Decl; 3] = [ENTRIES.decl(), BALANCES.decl(), KEY_SPEND.decl()];

/// How many billing entries `account` has.
pub fn count_of(r: &impl Reader, account: &str) -> Result<u64, StoreError> {
    r.count_prefix(&ENTRIES, &TimedKey::prefix(account))
}

/// Billing entries expire by age (`[retention] billing`, seven years by default).
pub const EXPIRY: crate::store::Expiry = crate::store::Expiry::owned(&ENTRIES);

/// Detaches up to `limit` billing entries of an erased account: each moves under
/// `pseudonym` with no key, and the spend of its key goes. The balance follows with
/// the last batch, so the books still add up. Returns how many entries moved.
pub fn detach_in(
    tx: &WriteTx<'_>,
    account: &str,
    pseudonym: &str,
    limit: usize,
) -> Result<u64, StoreError> {
    let prefix = TimedKey::prefix(account);
    let rows = tx.scan_prefix(&ENTRIES, &prefix, limit)?;
    for (old, mut entry) in rows.iter().cloned() {
        let mut new = TimedKey::prefix(pseudonym);
        new.extend_from_slice(&old[prefix.len()..]);
        if let Some(k) = entry.key.take() {
            tx.remove(&KEY_SPEND, &k)?;
        }
        entry.account = pseudonym.to_string();
        tx.remove(&ENTRIES, &old)?;
        tx.insert(&ENTRIES, &new, &entry)?;
    }
    if rows.len() < limit
        && let Some(balance) = tx.get(&BALANCES, account)?
    {
        tx.remove(&BALANCES, account)?;
        tx.insert(&BALANCES, pseudonym, &balance)?;
    }
    Ok(rows.len() as u64)
}

impl Ledger {
    /// Drops an erased account from the in-memory books.
    pub fn forget(&self, account: &str) {
        self.books().accounts.remove(account);
    }

    /// The ledger over one store; call [`Ledger::load`] before serving.
    pub fn new(store: Store) -> Self {
        Ledger {
            store,
            books: Arc::default(),
        }
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads every balance and key spend into memory.
    pub async fn load(&self) -> Result<(), LedgerError> {
        let (balances, spends) = self
            .store
            .read(|r| Ok::<_, StoreError>((r.scan_all(&BALANCES)?, r.scan_all(&KEY_SPEND)?)))
            .await?;
        let mut books = self.books();
        books.accounts = balances
            .into_iter()
            .map(|(a, balance)| {
                (
                    a,
                    Book {
                        balance,
                        reserved: 0,
                    },
                )
            })
            .collect();
        books.keys = spends
            .into_iter()
            .map(|(k, spent)| (k, KeyBook { spent, reserved: 0 }))
            .collect();
        Ok(())
    }

    /// Holds `amount` micro-credits of `account` (and of `key`'s budget) for one
    /// request. Fails when the balance, less what other requests hold, does not cover it.
    pub fn reserve(
        &self,
        account: &str,
        key: Option<KeyLimit<'_>>,
        amount: i64,
    ) -> Result<Hold, LedgerError> {
        let amount = amount.max(0);
        let mut guard = self.books();
        let books = &mut *guard;
        let book = book_of(&mut books.accounts, account);
        let available = book.balance - book.reserved;
        if amount > 0 && available < amount {
            return Err(LedgerError::Insufficient {
                needed: to_credits(amount),
                available: to_credits(available.max(0)),
            });
        }
        if let Some(k) = key {
            let kb = book_of(&mut books.keys, k.id);
            if let Some(budget) = k.budget
                && amount > 0
                && kb.spent + kb.reserved + amount > budget
            {
                return Err(LedgerError::KeyBudget {
                    budget: to_credits(budget),
                });
            }
            kb.reserved += amount;
        }
        book.reserved += amount;
        Ok(Hold {
            ledger: self.clone(),
            account: Arc::from(account),
            key: key.map(|k| Arc::from(k.id)),
            amount,
            open: true,
        })
    }

    /// Moves credits outside a request (grants, purchases, refunds, adjustments) and
    /// returns once the entry is durable. A negative amount must be covered by what is
    /// available.
    pub async fn post(
        &self,
        account: &str,
        kind: EntryKind,
        amount: i64,
        posting: Posting,
    ) -> Result<Entry, LedgerError> {
        if kind == EntryKind::Usage {
            return Err(LedgerError::Invalid(
                "usage is charged by requests, not posted by hand".into(),
            ));
        }
        if amount == 0 {
            return Err(LedgerError::Invalid("the amount must not be zero".into()));
        }
        if amount < 0 {
            // Take it like a request would, so in-flight holds stay covered.
            let hold = self.reserve(account, None, -amount)?;
            let entry = hold.settle_as(kind, -amount, ByHand(posting)).await?;
            return entry.ok_or_else(|| LedgerError::Invalid("nothing was taken".into()));
        }
        let owner = account.to_string();
        let entry = self
            .store
            .write(move |tx| {
                let entry = post(tx, &owner, kind, amount, &posting.borrowed())?;
                record_posting(tx, &entry)?;
                Ok::<_, LedgerError>(entry)
            })
            .await?;
        book_of(&mut self.books().accounts, account).balance += amount;
        Ok(entry)
    }

    /// Balance and credits held by requests in flight, in micro-credits.
    pub fn balance(&self, account: &str) -> (i64, i64) {
        self.books()
            .accounts
            .get(account)
            .map_or((0, 0), |b| (b.balance, b.reserved))
    }

    /// Every account with a balance, as (account, balance, held).
    pub fn balances(&self) -> Vec<(String, i64, i64)> {
        let mut all: Vec<_> = self
            .books()
            .accounts
            .iter()
            .map(|(a, b)| (a.clone(), b.balance, b.reserved))
            .collect();
        all.sort();
        all
    }

    /// An account's entries, newest first, before the cursor `before` (an entry id);
    /// the charge of every request answered before the call is in them.
    pub async fn entries(
        &self,
        account: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, LedgerError> {
        self.store.settled().await;
        let prefix = TimedKey::prefix(account);
        let before = match before {
            Some(id) => Some(
                TimedKey::of_id(account, id)
                    .ok_or_else(|| LedgerError::Invalid("`before` is not an entry id".into()))?,
            ),
            None => None,
        };
        let rows = self
            .store
            .read(move |r| r.scan_prefix_rev(&ENTRIES, &prefix, before.as_deref(), limit))
            .await?;
        Ok(rows.into_iter().map(|(_, e)| e).collect())
    }

    /// Every entry of an account, oldest first (for checks).
    pub async fn all_entries(&self, account: &str) -> Result<Vec<Entry>, LedgerError> {
        self.store.settled().await;
        let prefix = TimedKey::prefix(account);
        let rows = self
            .store
            .read(move |r| r.scan_prefix(&ENTRIES, &prefix, usize::MAX))
            .await?;
        Ok(rows.into_iter().map(|(_, e)| e).collect())
    }

    /// The durable balance of an account, read from storage.
    pub async fn stored_balance(&self, account: &str) -> Result<i64, LedgerError> {
        let account = account.to_string();
        Ok(self
            .store
            .read(move |r| r.get(&BALANCES, &account))
            .await?
            .unwrap_or(0))
    }
}

impl Hold {
    /// Micro-credits held.
    pub fn amount(&self) -> i64 {
        self.amount
    }

    /// The account the credits are held from.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The public id of the API key whose budget the credits are held from, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Charges `cost` (at most what is held) for a request and gives back the rest.
    /// The books change at once; the usage entry is committed in the background,
    /// together with what `charge` writes (the usage record), in one transaction, and
    /// `done` gets the outcome on the store's writer thread (so it must be quick). When
    /// the commit fails the books are put back first.
    pub fn settle<C, D>(self, cost: i64, charge: C, done: D)
    where
        C: Charge,
        D: FnOnce(Result<(), LedgerError>) + Send + 'static,
    {
        let (ledger, charged) = self.book(cost);
        let mut op = charged.op(EntryKind::Usage, charge);
        // The entry itself is dropped here, on the writer thread.
        let op = move |tx: &WriteTx<'_>| op(tx).map(drop);
        ledger.store.clone().write_detached(op, move |result| {
            if result.is_err() {
                charged.undo(&ledger);
            }
            done(result);
        });
    }

    /// Like [`Hold::settle`] for an admin's adjustment: returns once it is durable.
    async fn settle_as(
        self,
        kind: EntryKind,
        cost: i64,
        charge: impl Charge,
    ) -> Result<Option<Entry>, LedgerError> {
        let (ledger, charged) = self.book(cost);
        let result = ledger.store.write(charged.op(kind, charge)).await;
        if result.is_err() {
            charged.undo(&ledger);
        }
        result
    }

    /// Closes the hold in the books: the held amount is released and `cost` (at most
    /// what was held) charged.
    fn book(mut self, cost: i64) -> (Ledger, Charged) {
        let charge = cost.clamp(0, self.amount);
        self.open = false;
        {
            let mut books = self.ledger.books();
            let b = book_of(&mut books.accounts, &self.account);
            b.reserved -= self.amount;
            b.balance -= charge;
            if let Some(k) = &self.key {
                let kb = book_of(&mut books.keys, k);
                kb.reserved -= self.amount;
                kb.spent += charge;
            }
        }
        let charged = Charged {
            account: std::mem::take(&mut self.account),
            key: self.key.take(),
            charge,
        };
        (self.ledger.clone(), charged)
    }
}

/// A charge made in the books, on its way to storage.
struct Charged {
    account: Arc<str>,
    key: Option<Arc<str>>,
    charge: i64,
}

impl Charged {
    /// The write: the entry (none for a free request) and what `c` adds.
    fn op<C: Charge>(
        &self,
        kind: EntryKind,
        mut c: C,
    ) -> impl FnMut(&WriteTx<'_>) -> Result<Option<Entry>, LedgerError> + Send + 'static {
        // The hold's own names, shared: the write copies no string.
        let (owner, key, charge) = (self.account.clone(), self.key.clone(), self.charge);
        move |tx: &WriteTx<'_>| {
            let entry = if charge > 0 {
                let posting = c.posting(&owner, key.as_deref())?;
                Some(post(tx, &owner, kind, -charge, &posting)?)
            } else {
                None
            };
            c.write(tx, &owner, key.as_deref(), entry.as_ref())?;
            Ok(entry)
        }
    }

    /// Puts the books back after the write failed.
    fn undo(self, ledger: &Ledger) {
        let mut books = ledger.books();
        book_of(&mut books.accounts, &self.account).balance += self.charge;
        if let Some(k) = &self.key {
            book_of(&mut books.keys, k).spent -= self.charge;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let mut books = self.ledger.books();
        if let Some(b) = books.accounts.get_mut(&*self.account) {
            b.reserved -= self.amount;
        }
        if let Some(k) = &self.key
            && let Some(kb) = books.keys.get_mut(&**k)
        {
            kb.reserved -= self.amount;
        }
    }
}

/// Whole credits as micro-credits, for key budgets.
pub fn budget_micro(credits: u64) -> i64 {
    i64::try_from(credits)
        .unwrap_or(i64::MAX / MICRO)
        .saturating_mul(MICRO)
}
