//! The six loyalty calls and the operator's ledger tools (reverse an award or a
//! redemption, adjust, show a member, import members), as writer jobs. Ledger rules live
//! in `crate::loyalty` (pure); this file loads and stores members, awards, redemptions,
//! stock and identifiers around them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Millis;
use crate::codegen;
use crate::contract::loyalty::*;
use crate::contract::ApiError;
use crate::loyalty::{
    normalize_identifier, Account, Credit, Entry, EntryKind, IdentifierType, Program, Refusal,
    Spent, Why, IDENTIFIER_TYPES,
};
use crate::store::{Read, StoreError, Txn};

use super::lots::{MemberLots, FIRST_SEQ};
use super::records::{EntryRecord, LotRecord};
use super::{fingerprint, idempotent, keys, packed, Reply, State};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRecord {
    pub member_id: String,
    pub user_id: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub card: Option<String>,
    pub created_at: Millis,
    /// The totals; the lots are records of their own (`super::lots`).
    #[serde(with = "super::records::account")]
    pub account: Account,
    /// The member's first ledger entry (seq `lots::FIRST_SEQ`), kept here rather than as a
    /// record of its own (schema 4): see [`ledger_of`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_entry: Option<EntryRecord>,
    /// The lot that entry made, while it holds points (`lots::MemberLots` keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_lot: Option<LotRecord>,
}

/// Member `m`'s lots, written through the writer's `txn`; `first` is the member record's
/// `first_lot`.
fn lots_of<'a, 'b>(
    txn: &'a mut Txn<'b>,
    t: &'a str,
    p: &'a str,
    m: &'a str,
    first: &'a mut Option<LotRecord>,
) -> TxnLots<'a, 'b> {
    MemberLots::new(txn, t, p, m, first)
}

/// A member's lots as the writer changes them.
type TxnLots<'a, 'b> = MemberLots<'a, &'a mut Txn<'b>, &'a mut Option<LotRecord>>;

/// A member's ledger, oldest first: the first entry from the member record, the others
/// from their records.
pub fn ledger_of(
    r: &Txn<'_>,
    t: &str,
    p: &str,
    m: &MemberRecord,
) -> Result<Vec<Entry>, StoreError> {
    let mut out: Vec<Entry> = m.first_entry.iter().cloned().map(Entry::from).collect();
    for (_, v) in r.scan_prefix(&keys::ledger_prefix(t, p, &m.member_id))? {
        if let Ok(e) = serde_json::from_slice::<EntryRecord>(&v) {
            out.push(Entry::from(e));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwardRecord {
    pub member_id: String,
    pub purchase_id: String,
    pub transaction_id: String,
    pub purchase_amount_cents: i64,
    pub points: i64,
    pub reversed_points: i64,
    /// The ledger entry (and lot) the award created.
    pub lot: u64,
    /// The answer given, replayed for a re-sent purchase under a new transaction id.
    pub reply: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedemptionRecord {
    pub redemption_id: String,
    pub member_id: String,
    pub reward_id: String,
    pub points: i64,
    #[serde(with = "super::records::spent")]
    pub spent: Spent,
    pub transaction_id: String,
    pub code: Option<String>,
    pub reversed: bool,
    pub at: Millis,
}

type R = Result<Reply, StoreError>;

fn refuse(r: Refusal) -> Reply {
    Reply::rejected(r.code(), &r.message())
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn program(st: &State, tenant: &str, id: &str) -> Option<Arc<Program>> {
    st.tenant(tenant).and_then(|t| t.programs.get(id)).cloned()
}

fn member_by<R: Read>(
    txn: &R,
    t: &str,
    p: &str,
    kind: &str,
    value: &str,
) -> Result<Option<MemberRecord>, StoreError> {
    let Some(id) = packed::ident(txn, t, p, kind, value)? else {
        return Ok(None);
    };
    txn.get_json(&keys::member(t, p, &id))
}

fn member_by_id<R: Read>(
    txn: &R,
    t: &str,
    p: &str,
    id: &str,
) -> Result<Option<MemberRecord>, StoreError> {
    txn.get_json(&keys::member(t, p, id))
}

/// Run the ledger change `f` so that a refusal (any answer but a success) leaves none of
/// its writes: settling and spending write lot records as they go, and a refused call
/// must change nothing, as if its member record were not saved.
fn all_or_nothing(txn: &mut Txn<'_>, f: impl FnOnce(&mut Txn<'_>) -> R) -> R {
    let sp = txn.savepoint();
    let reply = f(txn)?;
    if reply.outcome != "ok" {
        txn.rollback_to(sp);
    }
    Ok(reply)
}

/// Write the member and its new ledger entries together (its first entry inside it).
fn save(txn: &mut Txn<'_>, t: &str, p: &str, m: &mut MemberRecord, entries: &[Entry]) {
    for e in entries {
        let rec = EntryRecord::from(e);
        if e.seq == FIRST_SEQ {
            m.first_entry = Some(rec);
        } else {
            txn.put_json(keys::ledger(t, p, &m.member_id, e.seq), &rec);
        }
    }
    txn.put_json(keys::member(t, p, &m.member_id), m);
}

fn new_member_id(txn: &mut Txn<'_>, t: &str, p: &str, now: Millis) -> Result<String, StoreError> {
    let mut h = Sha256::new();
    h.update(t.as_bytes());
    h.update([0]);
    h.update(p.as_bytes());
    h.update(txn.next_id()?.to_be_bytes());
    h.update(now.to_be_bytes());
    Ok(format!("mbr_{}", &hex::encode(h.finalize())[..20]))
}

/// Identifiers to link: (type key, normalised value).
fn identifiers(
    phone: Option<&str>,
    email: Option<&str>,
    card: Option<&str>,
) -> Result<Vec<(IdentifierType, String)>, ApiError> {
    let mut out = Vec::new();
    for (t, v, field) in [
        (IdentifierType::Phone, phone, "phone"),
        (IdentifierType::Email, email, "email"),
        (IdentifierType::Card, card, "cardNumber"),
    ] {
        if let Some(v) = v {
            out.push((
                t,
                normalize_identifier(t, v).map_err(|m| ApiError::invalid(field, m))?,
            ));
        }
    }
    Ok(out)
}

/// Create a member (with its signup bonus); the caller has checked the user is new.
fn create_member(
    txn: &mut Txn<'_>,
    t: &str,
    prog: &Program,
    user_id: Option<&str>,
    ids: &[(IdentifierType, String)],
    now: Millis,
) -> Result<(MemberRecord, Vec<Entry>, i64), StoreError> {
    let p = &prog.id;
    let member_id = new_member_id(txn, t, p, now)?;
    let mut m = MemberRecord {
        member_id: member_id.clone(),
        user_id: user_id.map(str::to_owned),
        phone: None,
        email: None,
        card: None,
        created_at: now,
        account: Account::default(),
        first_entry: None,
        first_lot: None,
    };
    for (kind, v) in ids {
        match kind {
            IdentifierType::Phone => m.phone = Some(v.clone()),
            IdentifierType::Email => m.email = Some(v.clone()),
            IdentifierType::Card => m.card = Some(v.clone()),
            _ => {}
        }
        packed::set_ident(txn, t, p, kind.key(), v, &member_id)?;
    }
    if let Some(u) = user_id {
        packed::set_ident(txn, t, p, "user", u, &member_id)?;
    }
    let mut entries = Vec::new();
    let bonus = prog.spec.signup_bonus;
    if bonus > 0 {
        // A bonus bounded at load.
        let mut lots = lots_of(txn, t, p, &member_id, &mut m.first_lot);
        let e = credit_fresh(
            &mut m.account,
            &mut lots,
            prog,
            now,
            EntryKind::SignupBonus,
            bonus,
        )?;
        entries.extend(e);
    }
    Ok((m, entries, bonus))
}

/// Credit a new member's account with `points` that are available now: the signup bonus
/// (counts toward the lifetime total) or an imported balance (does not: the import sets
/// the lifetime total itself). The account is fresh and the points bounded by the caller,
/// so the credit cannot be refused (`None` would only mean a broken bound).
fn credit_fresh(
    account: &mut Account,
    lots: &mut TxnLots<'_, '_>,
    prog: &Program,
    now: Millis,
    kind: EntryKind,
    points: i64,
) -> Result<Option<Entry>, StoreError> {
    let (reason, counts_lifetime) = match kind {
        EntryKind::SignupBonus => ("signup bonus", true),
        _ => ("imported balance", false),
    };
    let why = Why {
        reason: reason.into(),
        ..Why::default()
    };
    let credit = Credit {
        kind,
        points,
        pending_ms: 0,
        expire_ms: prog.expire_ms(),
        counts_lifetime,
    };
    Ok(account.credit(lots, now, credit, why)?.ok())
}

/// The member for a Karma user, enrolling them when the program says `auto_enroll`.
fn member_for_user(
    txn: &mut Txn<'_>,
    t: &str,
    prog: &Program,
    user: &str,
    now: Millis,
) -> Result<Option<(MemberRecord, Vec<Entry>)>, StoreError> {
    if let Some(m) = member_by(txn, t, &prog.id, "user", user)? {
        return Ok(Some((m, Vec::new())));
    }
    if !prog.spec.auto_enroll {
        return Ok(None);
    }
    let (m, entries, bonus) = create_member(txn, t, prog, Some(user), &[], now)?;
    let reply = json(&EnrollSuccess {
        ok: true,
        member_id: m.member_id.clone(),
        points_awarded: bonus,
    });
    packed::set_enrollment(txn, t, &prog.id, user, &reply)?;
    Ok(Some((m, entries)))
}

/// The program and the (possibly just auto-enrolled) member a call is about, or the
/// refusal to answer with.
type Subject = Result<(Arc<Program>, MemberRecord, Vec<Entry>), Reply>;

fn subject(
    txn: &mut Txn<'_>,
    t: &str,
    prog: Option<Arc<Program>>,
    user: &str,
    now: Millis,
) -> Result<Subject, StoreError> {
    let Some(prog) = prog else {
        return Ok(Err(refuse(Refusal::ProgramNotFound)));
    };
    Ok(match member_for_user(txn, t, &prog, user, now)? {
        Some((m, entries)) => Ok((prog, m, entries)),
        None => Err(refuse(Refusal::MemberNotFound)),
    })
}

/// The identifier's type and its syntax for that type are part of the request's validity:
/// checked (400) before the program is looked up.
pub fn lookup<Rd: Read>(txn: &Rd, prog: Option<Arc<Program>>, t: &str, req: &LookupRequest) -> R {
    let Some(kind) = IdentifierType::parse(&req.identifier_type) else {
        return Ok(Reply::error(&ApiError::invalid(
            "identifierType",
            format!("{:?} is not one of {IDENTIFIER_TYPES}", req.identifier_type),
        )));
    };
    let value = match normalize_identifier(kind, &req.identifier) {
        Ok(v) => v,
        Err(m) => return Ok(Reply::error(&ApiError::invalid("identifier", m))),
    };
    let Some(prog) = prog else {
        return Ok(refuse(Refusal::ProgramNotFound));
    };
    let m = match kind {
        IdentifierType::MemberId => member_by_id(txn, t, &prog.id, &value)?,
        k => member_by(txn, t, &prog.id, k.key(), &value)?,
    };
    Ok(match m {
        None => refuse(Refusal::MemberNotFound),
        Some(m) => Reply::ok(json(&LookupSuccess {
            ok: true,
            member_id: m.member_id,
            user_id: m.user_id,
        })),
    })
}

pub fn enroll(txn: &mut Txn<'_>, st: &mut State, t: &str, req: &EnrollRequest, now: Millis) -> R {
    // The identifiers' syntax is part of the request's validity: checked first.
    let ids = match identifiers(
        req.phone.as_deref(),
        req.email.as_deref(),
        req.card_number.as_deref(),
    ) {
        Ok(ids) => ids,
        Err(e) => return Ok(Reply::error(&e)),
    };
    let Some(prog) = program(st, t, &req.loyalty_program_id) else {
        return Ok(refuse(Refusal::ProgramNotFound));
    };
    if let Some(reply) = packed::enrollment(txn, t, &prog.id, &req.user_id)? {
        return Ok(Reply {
            status: 200,
            body: reply,
            outcome: "replay".into(),
        });
    }
    // An imported member has no stored answer (`import_member`): it is answered here.
    if let Some(member_id) = packed::ident(txn, t, &prog.id, "user", &req.user_id)? {
        return Ok(Reply {
            status: 200,
            body: enrolled_without_bonus(&member_id),
            outcome: "replay".into(),
        });
    }
    for (kind, v) in &ids {
        if packed::ident(txn, t, &prog.id, kind.key(), v)?.is_some() {
            return Ok(Reply::rejected(
                "IDENTIFIER_IN_USE",
                &format!("This {} already belongs to another member.", kind.key()),
            ));
        }
    }
    let (mut m, entries, bonus) = create_member(txn, t, &prog, Some(&req.user_id), &ids, now)?;
    save(txn, t, &prog.id, &mut m, &entries);
    let reply = json(&EnrollSuccess {
        ok: true,
        member_id: m.member_id.clone(),
        points_awarded: bonus,
    });
    packed::set_enrollment(txn, t, &prog.id, &req.user_id, &reply)?;
    Ok(Reply::ok(reply))
}

pub fn award(txn: &mut Txn<'_>, st: &mut State, t: &str, req: &AwardRequest, now: Millis) -> R {
    let prog = program(st, t, &req.loyalty_program_id);
    idempotent(
        txn,
        keys::idem(t, "award", &req.transaction_id),
        fingerprint(req),
        |txn| {
            let (prog, m, entries) = match subject(txn, t, prog, &req.user_id, now)? {
                Ok(s) => s,
                Err(refusal) => return Ok(refusal),
            };
            credit_purchase(txn, t, &prog, m, entries, req, now)
        },
    )
}

/// Credit a purchase to member `m` (award's core, shared with order sources): a purchase
/// already awarded credits nothing and replays the first award's answer.
fn credit_purchase(
    txn: &mut Txn<'_>,
    t: &str,
    prog: &Program,
    m: MemberRecord,
    entries: Vec<Entry>,
    req: &AwardRequest,
    now: Millis,
) -> R {
    all_or_nothing(txn, |txn| {
        credit_purchase_once(txn, t, prog, m, entries, req, now)
    })
}

fn credit_purchase_once(
    txn: &mut Txn<'_>,
    t: &str,
    prog: &Program,
    mut m: MemberRecord,
    mut entries: Vec<Entry>,
    req: &AwardRequest,
    now: Millis,
) -> R {
    let p = prog.id.as_str();

    // A purchase already awarded under another transaction id credits nothing.
    if let Some(orig_tx) = txn.get(&keys::purchase(t, p, &req.purchase_id))? {
        if let Some(a) =
            txn.get_json::<AwardRecord>(&keys::award(t, p, &String::from_utf8_lossy(&orig_tx)))?
        {
            return Ok(Reply {
                status: 200,
                body: a.reply,
                outcome: "duplicate_purchase".into(),
            });
        }
    }
    let mid = m.member_id.clone();
    entries.extend(
        m.account
            .settle(&mut lots_of(txn, t, p, &mid, &mut m.first_lot), now)?,
    );
    let before = prog.tier_for(m.account.lifetime()).map(|t| t.id.clone());
    let Some(points) = prog.award_points(
        req.purchase_amount_cents,
        &req.item_ids,
        m.account.lifetime(),
    ) else {
        return Ok(Reply::error(&ApiError::invalid(
            "purchaseAmountCents",
            format!(
                "the award for this purchase would exceed {} points (the most one award or member may hold)",
                crate::loyalty::MAX_POINTS
            ),
        )));
    };
    let why = Why {
        reason: format!("purchase {}", req.purchase_id),
        transaction_id: Some(req.transaction_id.clone()),
        purchase_id: Some(req.purchase_id.clone()),
        ..Why::default()
    };
    let e = match m.account.credit(
        &mut lots_of(txn, t, p, &mid, &mut m.first_lot),
        now,
        Credit {
            kind: EntryKind::Earn,
            points,
            pending_ms: prog.pending_ms(),
            expire_ms: prog.expire_ms(),
            counts_lifetime: true,
        },
        why,
    )? {
        Ok(e) => e,
        Err(too_many) => {
            return Ok(Reply::error(&ApiError::invalid(
                "purchaseAmountCents",
                format!("{points} points: {too_many}"),
            )))
        }
    };
    let lot = e.seq;
    entries.push(e);
    let after = prog.tier_for(m.account.lifetime()).map(|t| t.id.clone());
    let reply = json(&AwardSuccess {
        ok: true,
        points_awarded: points,
        new_balance: m.account.spendable(),
        tier_changed: before != after,
    });
    save(txn, t, p, &mut m, &entries);
    txn.put_json(
        keys::award(t, p, &req.transaction_id),
        &AwardRecord {
            member_id: m.member_id.clone(),
            purchase_id: req.purchase_id.clone(),
            transaction_id: req.transaction_id.clone(),
            purchase_amount_cents: req.purchase_amount_cents,
            points,
            reversed_points: 0,
            lot,
            reply: reply.clone(),
        },
    );
    txn.put(
        keys::purchase(t, p, &req.purchase_id),
        req.transaction_id.as_bytes().to_vec(),
    );
    Ok(Reply::ok(reply))
}

/// Who earns for an order from an order source: the member with this phone, else this
/// email (both normalised as lookup normalises), in program `p`.
pub fn member_by_contact(
    txn: &Txn<'_>,
    t: &str,
    p: &str,
    phone: Option<&str>,
    email: Option<&str>,
) -> Result<Option<String>, StoreError> {
    for (kind, v) in [("phone", phone), ("email", email)] {
        if let Some(v) = v {
            if let Some(m) = member_by(txn, t, p, kind, v)? {
                return Ok(Some(m.member_id));
            }
        }
    }
    Ok(None)
}

/// Award a purchase to member `member_id` of program `p` (order sources: the guest was
/// matched by phone or email, or chosen by the operator). `purchase_id` dedupes as for
/// Karma's awards; the answer is award's (`ok`, `pointsAwarded`, …) or a refusal.
pub fn award_member(
    txn: &mut Txn<'_>,
    st: &State,
    t: &str,
    p: &str,
    member_id: &str,
    req: &AwardRequest,
    now: Millis,
) -> R {
    let Some(prog) = program(st, t, p) else {
        return Ok(refuse(Refusal::ProgramNotFound));
    };
    let Some(m) = member_by_id(txn, t, p, member_id)? else {
        return Ok(refuse(Refusal::MemberNotFound));
    };
    credit_purchase(txn, t, &prog, m, Vec::new(), req, now)
}

/// The account call, a read: expiry and maturing are computed, not written. `prog` is
/// the program named by the request, if any.
pub fn account<Rd: Read>(
    r: &Rd,
    prog: Option<Arc<Program>>,
    t: &str,
    req: &AccountRequest,
    now: Millis,
) -> R {
    let Some(prog) = prog else {
        return Ok(refuse(Refusal::ProgramNotFound));
    };
    let Some(m) = member_by(r, t, &prog.id, "user", &req.user_id)? else {
        return Ok(refuse(Refusal::MemberNotFound));
    };
    let lots = MemberLots::new(r, t, &prog.id, &m.member_id, &m.first_lot);
    let (view, _) = m.account.view(&lots, now)?;
    let lifetime = view.lifetime();
    let tier = prog.tier_for(lifetime);
    Ok(Reply::ok(json(&AccountSuccess {
        ok: true,
        current_balance: view.spendable(),
        lifetime_earned: lifetime,
        tier_name: tier.map(|t| t.name.clone()),
        tier_id: tier.map(|t| t.id.clone()),
    })))
}

fn stock_remaining<Rd: Read>(
    txn: &Rd,
    t: &str,
    p: &str,
    r: &crate::loyalty::RewardSpec,
) -> Result<Option<i64>, StoreError> {
    Ok(match r.stock {
        None => None,
        Some(s) => Some((s - txn.get_u64(&keys::stock(t, p, &r.id))? as i64).max(0)),
    })
}

/// The rewards call, a read.
pub fn rewards<Rd: Read>(r: &Rd, prog: Option<Arc<Program>>, t: &str, _req: &RewardsRequest) -> R {
    let txn = r;
    let Some(prog) = prog else {
        return Ok(refuse(Refusal::ProgramNotFound));
    };
    let mut out = Vec::new();
    for r in prog.spec.rewards.iter().filter(|r| r.active) {
        out.push(Reward {
            reward_id: r.id.clone(),
            title: r.title.clone(),
            description: r.description.clone(),
            points_cost: r.points_cost,
            category: r.category.clone(),
            image_url: r.image_url.clone(),
            stock_remaining: stock_remaining(txn, t, &prog.id, r)?,
        });
    }
    Ok(Reply::ok(json(&RewardsSuccess {
        ok: true,
        rewards: out,
    })))
}

pub fn redeem(txn: &mut Txn<'_>, st: &mut State, t: &str, req: &RedeemRequest, now: Millis) -> R {
    let prog = program(st, t, &req.loyalty_program_id);
    idempotent(
        txn,
        keys::idem(t, "redeem", &req.transaction_id),
        fingerprint(req),
        |txn| {
            let (prog, mut m, mut entries) = match subject(txn, t, prog, &req.user_id, now)? {
                Ok(s) => s,
                Err(refusal) => return Ok(refusal),
            };
            all_or_nothing(txn, |txn| {
                let p = prog.id.as_str();
                let Some(reward) = prog.reward(&req.reward_id) else {
                    return Ok(refuse(Refusal::RewardNotFound));
                };
                if stock_remaining(txn, t, p, reward)? == Some(0) {
                    return Ok(refuse(Refusal::OutOfStock));
                }
                let mid = m.member_id.clone();
                entries.extend(
                    m.account
                        .settle(&mut lots_of(txn, t, p, &mid, &mut m.first_lot), now)?,
                );
                let redemption_id = format!("rdm_{:016x}", txn.next_id()?);
                let why = Why {
                    reason: format!("reward {}", reward.id),
                    transaction_id: Some(req.transaction_id.clone()),
                    redemption_id: Some(redemption_id.clone()),
                    ..Why::default()
                };
                let (spent, e) = match m.account.spend(
                    &mut lots_of(txn, t, p, &mid, &mut m.first_lot),
                    now,
                    reward.points_cost,
                    EntryKind::Redeem,
                    why,
                )? {
                    Ok(x) => x,
                    Err(balance) => {
                        return Ok(refuse(Refusal::InsufficientPoints {
                            balance,
                            needed: reward.points_cost,
                        }))
                    }
                };
                entries.push(e);
                let code = match &reward.code_pattern {
                    None => None,
                    Some(pat) => match reward_code(txn, t, p, pat, &redemption_id)? {
                        Ok(c) => Some(c),
                        Err(refusal) => return Ok(refusal),
                    },
                };
                if reward.stock.is_some() {
                    let k = keys::stock(t, p, &reward.id);
                    let used = txn.get_u64(&k)?;
                    txn.put_u64(k, used + 1);
                }
                txn.put_json(
                    keys::redemption(t, p, &redemption_id),
                    &RedemptionRecord {
                        redemption_id: redemption_id.clone(),
                        member_id: m.member_id.clone(),
                        reward_id: reward.id.clone(),
                        points: reward.points_cost,
                        spent,
                        transaction_id: req.transaction_id.clone(),
                        code: code.clone(),
                        reversed: false,
                        at: now,
                    },
                );
                let new_balance = m.account.spendable();
                save(txn, t, p, &mut m, &entries);
                Ok(Reply::ok(json(&RedeemSuccess {
                    ok: true,
                    redemption_id,
                    generated_code: code,
                    new_balance,
                })))
            })
        },
    )
}

/// A fresh reward code from `pattern`, unique within the program and counted against the
/// pattern's capacity (the 1 % guessing-odds rule of [`crate::codegen`]); `Err` is the
/// refusal to answer.
fn reward_code(
    txn: &mut Txn<'_>,
    t: &str,
    p: &str,
    pattern: &str,
    redemption_id: &str,
) -> Result<Result<String, Reply>, StoreError> {
    let count_key = keys::reward_code_count(t, p, pattern);
    let issued = txn.get_u64(&count_key)?;
    if let Err(no_room) = codegen::check_room(pattern, issued, 1) {
        return Ok(Err(Reply::rejected(
            "CODE_SPACE_EXHAUSTED",
            &format!("No reward code is left: {}", no_room.message),
        )));
    }
    let mut rng = match codegen::os_rng() {
        Ok(r) => r,
        Err(m) => return Ok(Err(Reply::error(&ApiError::new(500, "INTERNAL", m)))),
    };
    // Below 1 % of the space is taken, so 64 collisions in a row do not happen.
    for _ in 0..64 {
        let c = codegen::fill(pattern, &mut rng);
        if txn.get(&keys::reward_code(t, p, &c))?.is_none() {
            txn.put(
                keys::reward_code(t, p, &c),
                redemption_id.as_bytes().to_vec(),
            );
            txn.put_u64(count_key, issued.saturating_add(1));
            return Ok(Ok(c));
        }
    }
    Ok(Err(Reply::rejected(
        "CODE_SPACE_EXHAUSTED",
        "No unused reward code is left for this pattern; widen code_pattern.",
    )))
}

// ---- operator tools (admin API) -------------------------------------------------------

fn operation_id(id: &str) -> Result<(), ApiError> {
    if !crate::wire::valid_id(id) {
        return Err(ApiError::invalid("id", "a caller-chosen id for this operation (1-64 of A-Z a-z 0-9 - _ .), used to make retries safe"));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReversalRequest {
    /// Caller-chosen id: the reversal happens once per id.
    pub id: String,
    #[serde(default)]
    pub purchase_id: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
    /// Refunded amount for a partial reversal; omit to reverse what is left of the award.
    #[serde(default)]
    pub amount_cents: Option<i64>,
    #[serde(default)]
    pub reason: String,
}

/// Reverse an award (a refund), fully or pro rata: floor(points × amount / purchase), never
/// more than is left of the award. Points already spent are not clawed back below zero;
/// the answer says how many could not be recovered.
pub fn reverse_award(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    p: &str,
    req: ReversalRequest,
    now: Millis,
) -> R {
    if let Err(e) = operation_id(&req.id) {
        return Ok(Reply::error(&e));
    }
    let Some(prog) = program(st, t, p) else {
        return Ok(Reply::not_found("unknown loyalty program"));
    };
    let fp = fingerprint(&req);
    idempotent(
        txn,
        keys::idem(t, "reversal", &format!("{p}:{}", req.id)),
        fp,
        |txn| {
            all_or_nothing(txn, |txn| {
                let tx = match (&req.transaction_id, &req.purchase_id) {
                    (Some(tx), _) => Some(tx.clone()),
                    (None, Some(pid)) => txn
                        .get(&keys::purchase(t, p, pid))?
                        .map(|v| String::from_utf8_lossy(&v).into_owned()),
                    (None, None) => {
                        return Ok(Reply::error(&ApiError::invalid(
                            "purchaseId",
                            "give purchaseId or transactionId",
                        )))
                    }
                };
                let Some(mut award) = tx
                    .as_deref()
                    .map(|tx| txn.get_json::<AwardRecord>(&keys::award(t, p, tx)))
                    .transpose()?
                    .flatten()
                else {
                    return Ok(refuse(Refusal::AwardNotFound));
                };
                let left = award.points - award.reversed_points;
                let points = match req.amount_cents {
                    None => left,
                    Some(a) if a <= 0 || a > award.purchase_amount_cents => {
                        return Ok(Reply::error(&ApiError::invalid(
                            "amountCents",
                            format!(
                                "must be 1..={} (the purchase amount)",
                                award.purchase_amount_cents
                            ),
                        )));
                    }
                    // points × amount can pass i64 (10^15 × 10^10): exact in i128.
                    Some(a) => i64::try_from(
                        i128::from(award.points) * i128::from(a)
                            / i128::from(award.purchase_amount_cents.max(1)),
                    )
                    .unwrap_or(left)
                    .min(left),
                };
                if left == 0 {
                    return Ok(refuse(Refusal::AlreadyReversed));
                }
                let Some(mut m) = member_by_id(txn, t, p, &award.member_id)? else {
                    return Ok(refuse(Refusal::MemberNotFound));
                };
                let mid = m.member_id.clone();
                let mut lots = lots_of(txn, t, p, &mid, &mut m.first_lot);
                let mut entries = m.account.settle(&mut lots, now)?;
                let before = prog.tier_for(m.account.lifetime()).map(|t| t.id.clone());
                let why = Why {
                    reason: if req.reason.is_empty() {
                        format!("refund of purchase {}", award.purchase_id)
                    } else {
                        req.reason.clone()
                    },
                    transaction_id: Some(award.transaction_id.clone()),
                    purchase_id: Some(award.purchase_id.clone()),
                    reference: Some(req.id.clone()),
                    ..Why::default()
                };
                let (e, unrecovered) = m.account.reverse(&mut lots, now, award.lot, points, why)?;
                entries.push(e);
                let after = prog.tier_for(m.account.lifetime()).map(|t| t.id.clone());
                award.reversed_points += points;
                txn.put_json(keys::award(t, p, &award.transaction_id), &award);
                save(txn, t, p, &mut m, &entries);
                Ok(Reply::json(
                    200,
                    serde_json::json!({
                        "ok": true,
                        "reversalId": req.id,
                        "pointsReversed": points,
                        "pointsUnrecovered": unrecovered,
                        "newBalance": m.account.spendable(),
                        "tierChanged": before != after,
                    }),
                ))
            })
        },
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedemptionReversalRequest {
    pub id: String,
    #[serde(default)]
    pub reason: String,
}

/// Give a redemption's points back to the lots they came from, and its stock back.
pub fn reverse_redemption(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    p: &str,
    redemption_id: &str,
    req: RedemptionReversalRequest,
    now: Millis,
) -> R {
    if let Err(e) = operation_id(&req.id) {
        return Ok(Reply::error(&e));
    }
    let Some(prog) = program(st, t, p) else {
        return Ok(Reply::not_found("unknown loyalty program"));
    };
    let fp = fingerprint(&(&req, redemption_id));
    idempotent(
        txn,
        keys::idem(t, "redemption-reversal", &format!("{p}:{}", req.id)),
        fp,
        |txn| {
            all_or_nothing(txn, |txn| {
                let Some(mut rec) =
                    txn.get_json::<RedemptionRecord>(&keys::redemption(t, p, redemption_id))?
                else {
                    return Ok(refuse(Refusal::RedemptionNotFound));
                };
                if rec.reversed {
                    return Ok(refuse(Refusal::AlreadyReversed));
                }
                let Some(mut m) = member_by_id(txn, t, p, &rec.member_id)? else {
                    return Ok(refuse(Refusal::MemberNotFound));
                };
                let mid = m.member_id.clone();
                let mut lots = lots_of(txn, t, p, &mid, &mut m.first_lot);
                let mut entries = m.account.settle(&mut lots, now)?;
                let why = Why {
                    reason: if req.reason.is_empty() {
                        format!("reversal of redemption {redemption_id}")
                    } else {
                        req.reason.clone()
                    },
                    transaction_id: Some(rec.transaction_id.clone()),
                    redemption_id: Some(redemption_id.to_owned()),
                    reference: Some(req.id.clone()),
                    ..Why::default()
                };
                match m.account.restore(&mut lots, now, &rec.spent, why)? {
                    Ok(e) => entries.push(e),
                    Err(too_many) => {
                        return Ok(Reply::error(&ApiError::invalid(
                            "redemptionId",
                            format!("restoring {} points: {too_many}", rec.spent.total()),
                        )))
                    }
                }
                entries.extend(m.account.settle(&mut lots, now)?);
                if prog
                    .spec
                    .rewards
                    .iter()
                    .any(|r| r.id == rec.reward_id && r.stock.is_some())
                {
                    let k = keys::stock(t, p, &rec.reward_id);
                    let used = txn.get_u64(&k)?;
                    txn.put_u64(k, used.saturating_sub(1));
                }
                rec.reversed = true;
                txn.put_json(keys::redemption(t, p, redemption_id), &rec);
                save(txn, t, p, &mut m, &entries);
                Ok(Reply::json(
                    200,
                    serde_json::json!({
                        "ok": true,
                        "redemptionId": redemption_id,
                        "pointsReturned": rec.spent.total(),
                        "newBalance": m.account.spendable(),
                    }),
                ))
            })
        },
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdjustRequest {
    pub id: String,
    /// Signed: credit (> 0, spendable now, expires per the program) or debit (< 0).
    pub points: i64,
    pub reason: String,
    #[serde(default)]
    pub counts_toward_lifetime: bool,
}

pub fn adjust(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    p: &str,
    member_id: &str,
    req: AdjustRequest,
    now: Millis,
) -> R {
    if let Err(e) = operation_id(&req.id) {
        return Ok(Reply::error(&e));
    }
    if req.points == 0 || req.points.abs() > 1_000_000_000 {
        return Ok(Reply::error(&ApiError::invalid(
            "points",
            "must be non-zero, at most 1000000000 either way",
        )));
    }
    if req.reason.trim().is_empty() {
        return Ok(Reply::error(&ApiError::invalid(
            "reason",
            "say why; it is kept in the ledger",
        )));
    }
    let Some(prog) = program(st, t, p) else {
        return Ok(Reply::not_found("unknown loyalty program"));
    };
    let fp = fingerprint(&(&req, member_id));
    idempotent(
        txn,
        keys::idem(t, "adjust", &format!("{p}:{}", req.id)),
        fp,
        |txn| {
            all_or_nothing(txn, |txn| {
                let Some(mut m) = member_by_id(txn, t, p, member_id)? else {
                    return Ok(refuse(Refusal::MemberNotFound));
                };
                let mid = m.member_id.clone();
                let mut lots = lots_of(txn, t, p, &mid, &mut m.first_lot);
                let mut entries = m.account.settle(&mut lots, now)?;
                let why = Why {
                    reason: req.reason.clone(),
                    reference: Some(req.id.clone()),
                    ..Why::default()
                };
                if req.points > 0 {
                    match m.account.credit(
                        &mut lots,
                        now,
                        Credit {
                            kind: EntryKind::Adjustment,
                            points: req.points,
                            pending_ms: 0,
                            expire_ms: prog.expire_ms(),
                            counts_lifetime: req.counts_toward_lifetime,
                        },
                        why,
                    )? {
                        Ok(e) => entries.push(e),
                        Err(too_many) => {
                            return Ok(Reply::error(&ApiError::invalid(
                                "points",
                                too_many.to_string(),
                            )))
                        }
                    }
                } else {
                    match m.account.spend(
                        &mut lots,
                        now,
                        -req.points,
                        EntryKind::Adjustment,
                        why,
                    )? {
                        Ok((_, e)) => entries.push(e),
                        Err(balance) => {
                            return Ok(refuse(Refusal::InsufficientPoints {
                                balance,
                                needed: -req.points,
                            }))
                        }
                    }
                }
                save(txn, t, p, &mut m, &entries);
                Ok(Reply::json(
                    200,
                    serde_json::json!({"ok": true, "memberId": member_id, "points": req.points, "newBalance": m.account.spendable()}),
                ))
            })
        },
    )
}

/// A member named by memberId or by userId (the admin API's and the console's view).
pub struct MemberRef {
    pub by_user: bool,
    pub id: String,
    /// One page of the ledger, newest first (`None`: the whole ledger, oldest first).
    pub ledger_page: Option<LedgerPage>,
}

/// Which page of a member's ledger to answer, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerPage {
    /// 0: the newest entries.
    pub page: usize,
    pub per_page: usize,
}

/// The most ledger entries one page holds.
pub const MAX_LEDGER_PAGE: usize = 1000;

/// The page `lp` of `ledger` (oldest first), newest first.
fn ledger_page(ledger: Vec<Entry>, lp: LedgerPage) -> Vec<Entry> {
    ledger
        .into_iter()
        .rev()
        .skip(lp.page.saturating_mul(lp.per_page))
        .take(lp.per_page)
        .collect()
}

/// A member with identifiers, balances, tier, credit lots and ledger (the whole ledger
/// oldest first, or one page of it newest first).
pub fn show_member(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    p: &str,
    who: &MemberRef,
    now: Millis,
) -> R {
    let (by_user, id) = (who.by_user, who.id.as_str());
    let Some(prog) = program(st, t, p) else {
        return Ok(Reply::not_found("unknown loyalty program"));
    };
    let m = if by_user {
        member_by(txn, t, p, "user", id)?
    } else {
        member_by_id(txn, t, p, id)?
    };
    let Some(m) = m else {
        return Ok(Reply::not_found("no such member"));
    };
    let ledger = ledger_of(&*txn, t, p, &m)?;
    let ledger_sum: i64 = ledger.iter().map(|e| e.points).sum();
    // What the next write will record as expired, shown now.
    let (view, expiring) = m.account.view(
        &MemberLots::new(&*txn, t, p, &m.member_id, &m.first_lot),
        now,
    )?;
    let mut lots: Vec<_> = m
        .first_lot
        .iter()
        .cloned()
        .map(crate::loyalty::Lot::from)
        .collect();
    for (_, v) in txn.scan_prefix(&keys::lot_prefix(t, p, &m.member_id))? {
        if let Ok(l) = serde_json::from_slice::<LotRecord>(&v) {
            lots.push(crate::loyalty::Lot::from(l));
        }
    }
    let tier = prog.tier_for(view.lifetime());
    let entries = ledger.len();
    let ledger = match who.ledger_page {
        Some(lp) => ledger_page(ledger, lp),
        None => ledger,
    };
    let mut body = serde_json::json!({
            "ok": true,
            "memberId": m.member_id,
            "userId": m.user_id,
            "phone": m.phone,
            "email": m.email,
            "card": m.card,
            "createdAt": crate::clock::rfc3339(m.created_at),
            "currentBalance": view.spendable(),
            "pendingPoints": view.pending_points(),
            "lifetimeEarned": view.lifetime(),
            "tierId": tier.map(|t| t.id.clone()),
            "tierName": tier.map(|t| t.name.clone()),
            "ledgerSum": ledger_sum,
            "expiredNotYetRecorded": expiring,
            "lots": lots,
            "ledgerEntries": entries,
            "ledger": ledger,
    });
    if let Some(lp) = who.ledger_page {
        body["ledgerPage"] = serde_json::json!(lp.page);
        body["ledgerPerPage"] = serde_json::json!(lp.per_page);
    }
    Ok(Reply::json(200, body))
}

/// The program a member import writes with: the tenant's program with no signup bonus
/// (imported members get none), or the refusal when there is no such program.
pub fn import_program(st: &State, t: &str, p: &str) -> Result<Program, Reply> {
    let Some(prog) = program(st, t, p) else {
        return Err(Reply::not_found("unknown loyalty program"));
    };
    let mut no_bonus = (*prog).clone();
    no_bonus.spec.signup_bonus = 0;
    Ok(no_bonus)
}

/// One slice of a member import (the rows already checked by [`parse_member_rows`]):
/// each row becomes a member with its balance, unless its user or an identifier is a
/// member already — an earlier slice's, an earlier import's, or an earlier row's of this
/// one — and is counted as a duplicate. Returns (imported, duplicates).
pub fn import_members_slice(
    txn: &mut Txn<'_>,
    t: &str,
    p: &str,
    prog: &Program,
    rows: Vec<MemberRow>,
    now: Millis,
) -> Result<(u64, u64), StoreError> {
    let (mut imported, mut duplicates) = (0u64, 0u64);
    for r in rows {
        if import_member(txn, t, p, prog, r, now)? {
            imported += 1;
        } else {
            duplicates += 1;
        }
    }
    Ok((imported, duplicates))
}

/// One row of a member import, checked.
pub struct MemberRow {
    user: Option<String>,
    ids: Vec<(IdentifierType, String)>,
    balance: i64,
    lifetime: i64,
}

/// The member import's columns: where each is in a row, if present.
struct MemberColumns {
    user: Option<usize>,
    card: Option<usize>,
    phone: Option<usize>,
    email: Option<usize>,
    balance: Option<usize>,
    lifetime: Option<usize>,
}

/// Pass 1 of a member import (CSV `user_id,card,phone,email,balance,lifetime_earned`;
/// header required, columns in any order, all but one identifier optional): the header
/// and every row, checked; any problem refuses the whole file, naming each invalid row by
/// its line, and nothing is written.
pub fn parse_member_rows(csv_text: &[u8]) -> Result<Vec<MemberRow>, Reply> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(csv_text);
    let cols = member_columns(&mut rdr)?;
    let mut rows = Vec::new();
    let mut invalid = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let row = rec
            .map_err(|e| e.to_string())
            .and_then(|rec| member_row(&cols, &rec));
        match row {
            Ok(r) => rows.push(r),
            Err(message) => invalid.push(serde_json::json!({"line": line, "message": message})),
        }
    }
    if !invalid.is_empty() {
        return Err(Reply::json(
            400,
            serde_json::json!({
                "ok": false,
                "error": "INVALID_ROWS",
                "message": format!("{} invalid row(s); nothing was imported", invalid.len()),
                "invalid": invalid,
            }),
        ));
    }
    Ok(rows)
}

fn member_columns(rdr: &mut csv::Reader<&[u8]>) -> Result<MemberColumns, Reply> {
    let headers = rdr.headers().map_err(|e| {
        Reply::error(&ApiError::new(
            400,
            "INVALID_CSV",
            format!("cannot read the header row: {e}"),
        ))
    })?;
    let known = [
        "user_id",
        "card",
        "phone",
        "email",
        "balance",
        "lifetime_earned",
    ];
    if let Some(h) = headers.iter().find(|h| !known.contains(h)) {
        return Err(Reply::error(&ApiError::new(
            400,
            "INVALID_CSV",
            format!("unknown column {h:?}; use {}", known.join(",")),
        )));
    }
    let col = |name: &str| headers.iter().position(|h| h == name);
    Ok(MemberColumns {
        user: col("user_id"),
        card: col("card"),
        phone: col("phone"),
        email: col("email"),
        balance: col("balance"),
        lifetime: col("lifetime_earned"),
    })
}

fn member_row(cols: &MemberColumns, rec: &csv::StringRecord) -> Result<MemberRow, String> {
    let get = |c: Option<usize>| {
        c.and_then(|c| rec.get(c))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let num = |c: Option<usize>, name: &str| -> Result<Option<i64>, String> {
        match get(c) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=1_000_000_000).contains(n))
                .map(Some)
                .ok_or(format!(
                    "{name} must be a whole number 0..=1000000000, not {v:?}"
                )),
        }
    };
    let user = get(cols.user);
    if let Some(u) = &user {
        if u.len() > 128 || u.chars().any(char::is_control) {
            return Err("user_id: at most 128 printable characters".into());
        }
    }
    let ids = identifiers(
        get(cols.phone).as_deref(),
        get(cols.email).as_deref(),
        get(cols.card).as_deref(),
    )
    .map_err(|e| e.message)?;
    if user.is_none() && ids.is_empty() {
        return Err("a row needs user_id or one of card, phone, email".into());
    }
    let balance = num(cols.balance, "balance")?.unwrap_or(0);
    let lifetime = num(cols.lifetime, "lifetime_earned")?.unwrap_or(balance);
    Ok(MemberRow {
        user,
        ids,
        balance,
        lifetime,
    })
}

/// Pass 2, one row: make the member with its balance, unless its user or an identifier
/// is a member already (`false`: a duplicate).
fn import_member(
    txn: &mut Txn<'_>,
    t: &str,
    p: &str,
    prog: &Program,
    r: MemberRow,
    now: Millis,
) -> Result<bool, StoreError> {
    let mut taken = match &r.user {
        Some(u) => packed::ident(txn, t, p, "user", u)?.is_some(),
        None => false,
    };
    for (kind, v) in &r.ids {
        taken |= packed::ident(txn, t, p, kind.key(), v)?.is_some();
    }
    if taken {
        return Ok(false);
    }
    let (mut m, mut entries, _) = create_member(txn, t, prog, r.user.as_deref(), &r.ids, now)?;
    // A balance of at most 10^9 (checked at parse).
    let mid = m.member_id.clone();
    let e = credit_fresh(
        &mut m.account,
        &mut lots_of(txn, t, p, &mid, &mut m.first_lot),
        prog,
        now,
        EntryKind::Import,
        r.balance,
    )?;
    entries.extend(e);
    m.account.lifetime_total = r.lifetime;
    // No enroll answer is stored for an imported member: `enroll` answers it as
    // `enrolled_without_bonus` (one record fewer a member; BENCHMARKS.md, issue 13 §4).
    save(txn, t, p, &mut m, &entries);
    Ok(true)
}

/// Provider-state setup, idempotent: bring the member of `userId` (or of the first given
/// identifier) to the named identifiers, balance and lifetime; create it (no signup bonus)
/// when absent. An identifier held by another member cannot be reached: 409.
pub fn provision_member(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    p: &str,
    params: &serde_json::Value,
    now: Millis,
) -> R {
    let Some(prog) = program(st, t, p) else {
        return Ok(Reply::error(&ApiError::invalid(
            "params.program",
            format!("no loyalty program {p:?}"),
        )));
    };
    let want = match state_member_params(params) {
        Ok(w) => w,
        Err(e) => return Ok(Reply::error(&e)),
    };
    all_or_nothing(txn, |txn| provision(txn, t, &prog, &want, now))
}

/// [`provision_member`] once the parameters are read.
fn provision(txn: &mut Txn<'_>, t: &str, prog: &Program, want: &StateMember, now: Millis) -> R {
    let p = prog.id.as_str();
    let (mut m, mut entries) = find_or_create_state_member(txn, t, p, prog, want, now)?;
    if let Some(refusal) = claim_identifiers(txn, t, p, &mut m, &want.ids)? {
        return Ok(refusal);
    }
    let (balance, lifetime) = (want.balance, want.lifetime);
    let mid = m.member_id.clone();
    let mut lots = lots_of(txn, t, p, &mid, &mut m.first_lot);
    if let Err(e) = reset_balance(
        &mut m.account,
        &mut lots,
        prog,
        (balance, lifetime),
        &mut entries,
        now,
    )? {
        return Ok(Reply::error(&ApiError::new(
            409,
            "STATE_UNREACHABLE",
            format!("state member: {e}"),
        )));
    }
    save(txn, t, p, &mut m, &entries);
    if let Some(u) = &want.user {
        record_enrollment(txn, t, p, u, &m.member_id)?;
    }
    Ok(Reply::json(
        200,
        serde_json::json!({
            "ok": true,
            "memberId": m.member_id,
            "userId": want.user,
            "balance": m.account.spendable(),
            "lifetimeEarned": m.account.lifetime(),
        }),
    ))
}

/// The member a `member` provider state asks for.
struct StateMember {
    user: Option<String>,
    ids: Vec<(IdentifierType, String)>,
    balance: i64,
    lifetime: i64,
}

fn state_member_params(params: &serde_json::Value) -> Result<StateMember, ApiError> {
    let text = |k: &str| {
        params.get(k).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let user = text("userId");
    let ids = identifiers(
        text("phone").as_deref(),
        text("email").as_deref(),
        text("card").as_deref(),
    )?;
    let number = |k: &str| match params.get(k) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|n| (0..=crate::loyalty::MAX_POINTS).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("params.{k}"),
                    format!("an integer from 0 to {}", crate::loyalty::MAX_POINTS),
                )
            }),
    };
    let (balance, lifetime) = match (number("balance"), number("lifetimeEarned")) {
        (Ok(b), Ok(l)) => (b.unwrap_or(0), l.unwrap_or(b.unwrap_or(0))),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    Ok(StateMember {
        user,
        ids,
        balance,
        lifetime,
    })
}

/// The member of `userId` (or, without one, of the first given identifier that has one),
/// settled; or a new member (no signup bonus).
fn find_or_create_state_member(
    txn: &mut Txn<'_>,
    t: &str,
    p: &str,
    prog: &Program,
    want: &StateMember,
    now: Millis,
) -> Result<(MemberRecord, Vec<Entry>), StoreError> {
    let mut found = match &want.user {
        Some(u) => member_by(txn, t, p, "user", u)?,
        None => None,
    };
    if found.is_none() && want.user.is_none() {
        for (kind, v) in &want.ids {
            if let Some(m) = member_by(txn, t, p, kind.key(), v)? {
                found = Some(m);
                break;
            }
        }
    }
    Ok(match found {
        Some(mut m) => {
            let mid = m.member_id.clone();
            let entries = m
                .account
                .settle(&mut lots_of(txn, t, p, &mid, &mut m.first_lot), now)?;
            (m, entries)
        }
        None => {
            let mut no_bonus = prog.clone();
            no_bonus.spec.signup_bonus = 0;
            let (m, entries, _) = create_member(txn, t, &no_bonus, want.user.as_deref(), &[], now)?;
            (m, entries)
        }
    })
}

/// Give `m` the identifiers `ids`; one that belongs to another member is a 409 (returned).
fn claim_identifiers(
    txn: &mut Txn<'_>,
    t: &str,
    p: &str,
    m: &mut MemberRecord,
    ids: &[(IdentifierType, String)],
) -> Result<Option<Reply>, StoreError> {
    for (kind, v) in ids {
        match packed::ident(txn, t, p, kind.key(), v)? {
            Some(owner) if owner != m.member_id => {
                return Ok(Some(Reply::error(&ApiError::new(
                    409,
                    "STATE_UNREACHABLE",
                    format!(
                        "state member: the {} {v:?} belongs to another member",
                        kind.key()
                    ),
                ))))
            }
            Some(_) => {}
            None => packed::set_ident(txn, t, p, kind.key(), v, &m.member_id)?,
        }
        match kind {
            IdentifierType::Phone => m.phone = Some(v.clone()),
            IdentifierType::Email => m.email = Some(v.clone()),
            IdentifierType::Card => m.card = Some(v.clone()),
            _ => {}
        }
    }
    Ok(None)
}

/// The enroll answer of a member that did not enroll through `enroll` (imported, or made
/// by a provider state): as if it had enrolled with no bonus.
fn enrolled_without_bonus(member_id: &str) -> Vec<u8> {
    json(&EnrollSuccess {
        ok: true,
        member_id: member_id.to_owned(),
        points_awarded: 0,
    })
}

/// Store the enroll answer for `user` as [`enrolled_without_bonus`], so that it stays the
/// answer whatever later happens to the user's identifier.
fn record_enrollment(
    txn: &mut Txn<'_>,
    t: &str,
    p: &str,
    user: &str,
    member_id: &str,
) -> Result<(), StoreError> {
    packed::set_enrollment(txn, t, p, user, &enrolled_without_bonus(member_id))
}

/// Make the spendable balance `balance` (one credit or debit for the difference) and the
/// lifetime earned `lifetime`, for a provider state. Refused when the credit would take the
/// member (pending points included) past the most a member may hold.
fn reset_balance(
    account: &mut Account,
    lots: &mut TxnLots<'_, '_>,
    prog: &Program,
    (balance, lifetime): (i64, i64),
    entries: &mut Vec<Entry>,
    now: Millis,
) -> Result<Result<(), crate::loyalty::TooManyPoints>, StoreError> {
    let why = || Why {
        reason: "provider state".into(),
        ..Why::default()
    };
    let diff = balance - account.spendable();
    if diff > 0 {
        let credit = Credit {
            kind: EntryKind::Import,
            points: diff,
            pending_ms: 0,
            expire_ms: prog.expire_ms(),
            counts_lifetime: false,
        };
        match account.credit(lots, now, credit, why())? {
            Ok(e) => entries.push(e),
            Err(too_many) => return Ok(Err(too_many)),
        }
    } else if diff < 0 {
        // Spending at most what is spendable cannot fail.
        if let Ok((_, e)) = account.spend(lots, now, -diff, EntryKind::Adjustment, why())? {
            entries.push(e);
        }
    }
    let pending = account.lifetime_total - account.lifetime();
    account.lifetime_total = lifetime + pending;
    Ok(Ok(()))
}
