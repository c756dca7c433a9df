//! Stored record formats, apart from the domain types.
//!
//! A domain type embedded in a stored record (a member's lots, a ledger entry, where spent
//! points came from, a hold's state) is written and read through a mirror type here,
//! converted field by field. Renaming or reshaping a domain field therefore changes a
//! conversion, which the compiler points at, never the bytes on disk; the golden tests
//! below pin these formats (`store::SCHEMA_VERSION`; version 1 kept a member's lots inside
//! the member record: `AccountV1` reads it for the migration; version 4 embeds the first
//! `EntryRecord` and `LotRecord` in the `MemberRecord`, in these same formats). A
//! change to these formats that an older build could not read bumps that version.
//!
//! The service's own record structs (`HoldRecord`, `MemberRecord`, `AwardRecord`,
//! `RedemptionRecord`, history events, webhook records, bulk codes) are record types
//! already; they embed domain types only through the `with` modules here. Campaign and
//! program specs are stored in their external format — the one the config file and the
//! admin API accept, which cannot change without breaking configs either; a golden test
//! pins it too.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::clock::Millis;
use crate::loyalty::{Account, Entry, EntryKind, Lot, Spent};
use crate::voucher::HoldState;

/// A credit lot as stored, a record of its own (`llot/…`, schema 2; inside the member
/// record in schema 1; the member's first lot, seq 0, inside the member record from schema
/// 4: `MemberRecord::first_lot`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LotRecord {
    seq: u64,
    remaining: i64,
    lifetime_part: i64,
    available_at: Millis,
    expires_at: Option<Millis>,
}

impl From<&Lot> for LotRecord {
    fn from(l: &Lot) -> LotRecord {
        LotRecord {
            seq: l.seq,
            remaining: l.remaining,
            lifetime_part: l.lifetime_part,
            available_at: l.available_at,
            expires_at: l.expires_at,
        }
    }
}

impl From<LotRecord> for Lot {
    fn from(l: LotRecord) -> Lot {
        Lot {
            seq: l.seq,
            remaining: l.remaining,
            lifetime_part: l.lifetime_part,
            available_at: l.available_at,
            expires_at: l.expires_at,
        }
    }
}

/// A member's totals as stored in the member record (schema 2).
#[derive(Serialize, Deserialize)]
struct AccountRecord {
    total: i64,
    pending: i64,
    pending_lifetime: i64,
    matured_at: Millis,
    lifetime_total: i64,
    next_seq: u64,
    next_expiry: Option<Millis>,
}

impl From<&Account> for AccountRecord {
    fn from(a: &Account) -> AccountRecord {
        AccountRecord {
            total: a.total,
            pending: a.pending,
            pending_lifetime: a.pending_lifetime,
            matured_at: a.matured_at,
            lifetime_total: a.lifetime_total,
            next_seq: a.next_seq,
            next_expiry: a.next_expiry,
        }
    }
}

impl From<AccountRecord> for Account {
    fn from(r: AccountRecord) -> Account {
        Account {
            total: r.total,
            pending: r.pending,
            pending_lifetime: r.pending_lifetime,
            matured_at: r.matured_at,
            lifetime_total: r.lifetime_total,
            next_seq: r.next_seq,
            next_expiry: r.next_expiry,
        }
    }
}

/// `#[serde(with = "records::account")]` on a stored [`Account`].
pub mod account {
    use super::*;

    pub fn serialize<S: Serializer>(a: &Account, s: S) -> Result<S::Ok, S::Error> {
        AccountRecord::from(a).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Account, D::Error> {
        AccountRecord::deserialize(d).map(Account::from)
    }
}

/// A member's account as schema 1 stored it: every open lot inside the member record.
/// Read only by the migration to schema 2 (`service::lots::migrate_page`).
#[derive(Deserialize)]
pub struct AccountV1 {
    lots: Vec<LotRecord>,
    lifetime_total: i64,
    next_seq: u64,
}

impl AccountV1 {
    /// The lots, and the schema-2 account holding them, matured at `now`: its pending
    /// sums are over the lots not spendable at `now`.
    pub fn upgrade(self, now: Millis) -> (Vec<Lot>, Account) {
        let lots: Vec<Lot> = self.lots.into_iter().map(Lot::from).collect();
        let later = || lots.iter().filter(|l| l.available_at > now);
        let account = Account {
            total: lots.iter().map(|l| l.remaining).sum(),
            pending: later().map(|l| l.remaining).sum(),
            pending_lifetime: later().map(|l| l.lifetime_part).sum(),
            matured_at: now,
            lifetime_total: self.lifetime_total,
            next_seq: self.next_seq,
            next_expiry: lots.iter().filter_map(|l| l.expires_at).min(),
        };
        (lots, account)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EntryKindRecord {
    Earn,
    SignupBonus,
    Redeem,
    Reversal,
    RedemptionReversal,
    Expiry,
    Adjustment,
    Import,
}

impl From<EntryKind> for EntryKindRecord {
    fn from(k: EntryKind) -> EntryKindRecord {
        match k {
            EntryKind::Earn => EntryKindRecord::Earn,
            EntryKind::SignupBonus => EntryKindRecord::SignupBonus,
            EntryKind::Redeem => EntryKindRecord::Redeem,
            EntryKind::Reversal => EntryKindRecord::Reversal,
            EntryKind::RedemptionReversal => EntryKindRecord::RedemptionReversal,
            EntryKind::Expiry => EntryKindRecord::Expiry,
            EntryKind::Adjustment => EntryKindRecord::Adjustment,
            EntryKind::Import => EntryKindRecord::Import,
        }
    }
}

impl From<EntryKindRecord> for EntryKind {
    fn from(k: EntryKindRecord) -> EntryKind {
        match k {
            EntryKindRecord::Earn => EntryKind::Earn,
            EntryKindRecord::SignupBonus => EntryKind::SignupBonus,
            EntryKindRecord::Redeem => EntryKind::Redeem,
            EntryKindRecord::Reversal => EntryKind::Reversal,
            EntryKindRecord::RedemptionReversal => EntryKind::RedemptionReversal,
            EntryKindRecord::Expiry => EntryKind::Expiry,
            EntryKindRecord::Adjustment => EntryKind::Adjustment,
            EntryKindRecord::Import => EntryKind::Import,
        }
    }
}

/// A ledger entry as stored (`lled/…`; the member's first, seq 0, inside the member record
/// from schema 4: `MemberRecord::first_entry`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryRecord {
    seq: u64,
    at: Millis,
    kind: EntryKindRecord,
    points: i64,
    balance_after: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purchase_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redemption_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
}

impl From<&Entry> for EntryRecord {
    fn from(e: &Entry) -> EntryRecord {
        EntryRecord {
            seq: e.seq,
            at: e.at,
            kind: e.kind.into(),
            points: e.points,
            balance_after: e.balance_after,
            reason: e.reason.clone(),
            transaction_id: e.transaction_id.clone(),
            purchase_id: e.purchase_id.clone(),
            redemption_id: e.redemption_id.clone(),
            reference: e.reference.clone(),
        }
    }
}

impl From<EntryRecord> for Entry {
    fn from(r: EntryRecord) -> Entry {
        Entry {
            seq: r.seq,
            at: r.at,
            kind: r.kind.into(),
            points: r.points,
            balance_after: r.balance_after,
            reason: r.reason,
            transaction_id: r.transaction_id,
            purchase_id: r.purchase_id,
            redemption_id: r.redemption_id,
            reference: r.reference,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SpentPartRecord {
    lot: u64,
    points: i64,
    available_at: Millis,
    expires_at: Option<Millis>,
}

/// `#[serde(with = "records::spent")]` on a stored [`Spent`].
pub mod spent {
    use super::*;
    use crate::loyalty::SpentPart;

    pub fn serialize<S: Serializer>(sp: &Spent, s: S) -> Result<S::Ok, S::Error> {
        let parts: Vec<SpentPartRecord> =
            sp.0.iter()
                .map(|p| SpentPartRecord {
                    lot: p.lot,
                    points: p.points,
                    available_at: p.available_at,
                    expires_at: p.expires_at,
                })
                .collect();
        parts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Spent, D::Error> {
        let parts = Vec::<SpentPartRecord>::deserialize(d)?;
        Ok(Spent(
            parts
                .into_iter()
                .map(|p| SpentPart {
                    lot: p.lot,
                    points: p.points,
                    available_at: p.available_at,
                    expires_at: p.expires_at,
                })
                .collect(),
        ))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HoldStateRecord {
    Held,
    Committed,
    Released,
    Reactivated,
}

/// `#[serde(with = "records::hold_state")]` on a stored [`HoldState`].
pub mod hold_state {
    use super::*;

    pub fn serialize<S: Serializer>(h: &HoldState, s: S) -> Result<S::Ok, S::Error> {
        match h {
            HoldState::Held => HoldStateRecord::Held,
            HoldState::Committed => HoldStateRecord::Committed,
            HoldState::Released => HoldStateRecord::Released,
            HoldState::Reactivated => HoldStateRecord::Reactivated,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HoldState, D::Error> {
        Ok(match HoldStateRecord::deserialize(d)? {
            HoldStateRecord::Held => HoldState::Held,
            HoldStateRecord::Committed => HoldState::Committed,
            HoldStateRecord::Released => HoldState::Released,
            HoldStateRecord::Reactivated => HoldState::Reactivated,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Golden records of schema version 2: what a store written by this version holds must
    //! stay readable, and what it writes must not change without a version bump; and a
    //! schema-1 member record, which the migration must read.

    use super::*;
    use crate::service::loyalty::{MemberRecord, RedemptionRecord};
    use crate::service::voucher::HoldRecord;

    fn roundtrip<T: Serialize + serde::de::DeserializeOwned>(golden: &str) {
        let v: T = serde_json::from_str(golden).expect("golden record reads");
        assert_eq!(serde_json::to_string(&v).unwrap(), golden);
    }

    #[test]
    fn member_and_lot_records_keep_their_format() {
        roundtrip::<MemberRecord>(
            r#"{"member_id":"mbr_1","user_id":"u1","phone":null,"email":null,"card":null,"created_at":5,"account":{"total":57,"pending":7,"pending_lifetime":0,"matured_at":6,"lifetime_total":50,"next_seq":2,"next_expiry":99}}"#,
        );
        roundtrip::<LotRecord>(
            r#"{"seq":1,"remaining":7,"lifetime_part":0,"available_at":9,"expires_at":99}"#,
        );
    }

    /// A schema-1 member record, as that version wrote it.
    pub(crate) const MEMBER_V1: &str = r#"{"member_id":"mbr_1","user_id":"u1","phone":null,"email":null,"card":null,"created_at":5,"account":{"lots":[{"seq":0,"remaining":50,"lifetime_part":50,"available_at":5,"expires_at":null},{"seq":1,"remaining":7,"lifetime_part":7,"available_at":9,"expires_at":99}],"lifetime_total":57,"next_seq":2}}"#;

    #[test]
    fn schema_1_accounts_upgrade_with_their_lots() {
        let v: serde_json::Value = serde_json::from_str(MEMBER_V1).unwrap();
        let old: AccountV1 = serde_json::from_value(v["account"].clone()).unwrap();
        let (lots, a) = old.upgrade(6);
        assert_eq!(lots.len(), 2);
        assert_eq!(
            (lots[1].seq, lots[1].remaining, lots[1].expires_at),
            (1, 7, Some(99))
        );
        assert_eq!(
            (a.total, a.pending, a.pending_lifetime, a.matured_at),
            (57, 7, 7, 6)
        );
        assert_eq!((a.spendable(), a.lifetime(), a.next_seq), (50, 50, 2));
        assert_eq!(a.next_expiry, Some(99));
    }

    #[test]
    fn ledger_entries_keep_their_format() {
        let golden = r#"{"seq":3,"at":7,"kind":"redemption_reversal","points":-4,"balanceAfter":10,"reason":"r","transactionId":"loy_1","redemptionId":"rdm_1"}"#;
        let e: Entry = serde_json::from_str::<EntryRecord>(golden).unwrap().into();
        assert_eq!(e.kind, EntryKind::RedemptionReversal);
        assert_eq!(
            serde_json::to_string(&EntryRecord::from(&e)).unwrap(),
            golden
        );
    }

    #[test]
    fn redemption_and_hold_records_keep_their_format() {
        roundtrip::<RedemptionRecord>(
            r#"{"redemption_id":"rdm_1","member_id":"mbr_1","reward_id":"coffee","points":100,"spent":[{"lot":0,"points":100,"available_at":5,"expires_at":null}],"transaction_id":"loy_1","code":"CF-1","reversed":false,"at":5}"#,
        );
        roundtrip::<HoldRecord>(
            r#"{"provider_ref":"kph_1","campaign":"c","code":"A1","guest":null,"location":"42","amount_cents":500,"created_at":1,"expires_at":2,"state":"reactivated","transaction_id":"res_1","updated_at":3,"held_unlogged":true}"#,
        );
    }

    #[test]
    fn campaign_and_program_specs_keep_their_format() {
        roundtrip::<crate::voucher::CampaignSpec>(
            r#"{"id":"c","codes":["A1"],"discount":{"percent":10},"max_discount_cents":2000,"items":["1001",7],"schedule":{"days":["mon"],"from":"11:00","until":"14:00","timezone":"Europe/Stockholm"},"max_uses_per_code":1,"max_discount_total_cents":100000}"#,
        );
        roundtrip::<crate::loyalty::ProgramSpec>(
            r#"{"program_id":7,"earn":{"points":1,"per_cents":100},"signup_bonus":50,"item_bonus":{"1001":20},"auto_enroll":false,"pending_days":0,"expire_days":365,"tiers":[{"id":"b","name":"B","min_lifetime":0,"multiplier_percent":null}],"rewards":[{"id":"coffee","title":"Coffee","description":"","points_cost":100,"category":null,"image_url":null,"stock":5,"code_pattern":"CF-######","active":true}]}"#,
        );
    }
}
