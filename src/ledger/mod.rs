//! Credits (data class `billing`): an append-only ledger of entries (grant, usage,
//! refund, purchase, adjustment) and one balance per account, changed in the same
//! transaction as the entry, so the entries of an account always sum to its balance.
//!
//! Paid requests reserve their largest possible cost first ([`Ledger::reserve`]), in
//! memory and under one lock, so concurrent requests can never spend more than the
//! balance. The [`Hold`] is then settled with the actual cost (never more than was
//! reserved) or, when dropped unsettled, released: every failure path releases.
//!
//! Amounts are whole micro-credits (`i64`, one credit = 1 000 000), so a request that
//! costs a fraction of a cent is still charged exactly.

mod routes;
mod service;

pub use routes::routes;
pub use service::{
    Charge, EXPIRY, Entry, EntryKind, Hold, KeyLimit, Ledger, LedgerError, Posting, TABLES,
    budget_micro, count_of, detach_in, export_page,
};

/// Micro-credits per credit.
pub const MICRO: i64 = 1_000_000;

/// Micro-credits as credits, for people and JSON.
pub fn to_credits(micro: i64) -> f64 {
    micro as f64 / MICRO as f64
}

/// Credits given by a person as micro-credits; refuses what is not a sane amount.
pub fn from_credits(credits: f64) -> Result<i64, LedgerError> {
    if !credits.is_finite() || credits.abs() > 1e12 {
        return Err(LedgerError::Invalid(
            "the amount must be a number of credits below one trillion".into(),
        ));
    }
    Ok((credits * MICRO as f64).round() as i64)
}

/// The cost of `usd` dollars in micro-credits at `per_usd` credits per dollar, rounded up
/// so that a paid request is never free.
pub fn usd_to_micro(usd: f64, per_usd: f64) -> i64 {
    let micro = usd * per_usd * MICRO as f64;
    if micro.is_finite() && micro > 0.0 {
        // Float error must not add a micro-credit to an exact price.
        let near = micro.round();
        let whole = if (micro - near).abs() < 1e-6 {
            near
        } else {
            micro.ceil()
        };
        whole.max(1.0).min(i64::MAX as f64) as i64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_round_trip_and_costs_round_up() {
        assert_eq!(from_credits(12.5).unwrap(), 12_500_000);
        assert_eq!(to_credits(12_500_000), 12.5);
        assert!(from_credits(f64::NAN).is_err());
        assert!(from_credits(1e13).is_err());
        // 100 tokens at $0.15 per million, 1000 credits per dollar: 0.015 credits.
        assert_eq!(usd_to_micro(100.0 * 0.15 / 1e6, 1000.0), 15_000);
        assert_eq!(usd_to_micro(1e-15, 1000.0), 1);
        assert_eq!(usd_to_micro(0.0, 1000.0), 0);
        assert_eq!(usd_to_micro(-1.0, 1000.0), 0);
    }
}
