//! `store_records_held`: what the engine last knew a store to hold (the
//! Twenty store's first destroy sweep after a restart compares with it).

mod support;

use contact_sync_state::StoreRecord;

fn record(id: &str, native: Option<&str>, hash: &str, deleted: bool) -> StoreRecord {
    StoreRecord {
        store: "twenty".into(),
        contact_id: id.into(),
        native_id: native.map(str::to_string),
        synced_version: 1,
        hash: hash.into(),
        deleted,
        ..Default::default()
    }
}

on_both! {
    fn only_live_known_records_with_a_native_id_are_held_in_pages(place) {
        let mut db = place.open();
        let tx = db.tx().unwrap();
        tx.put_store_records(&[
            record("a", Some("p-a"), "h", false),
            record("b", Some("p-b"), "h", true), // deleted there
            record("c", None, "h", false),       // no native id
            record("d", Some("p-d"), "", false), // unknown: a lost answer
            record("e", Some("p-e"), "h", false),
            record("f", Some("p-f"), "h", false),
        ])
        .unwrap();
        let mut other = record("a", Some("q-a"), "h", false);
        other.store = "local".into();
        tx.put_store_record(&other).unwrap();
        tx.commit().unwrap();
        let first = db.store_records_held("twenty", None, 2).unwrap();
        let ids: Vec<&str> = first.iter().map(|r| r.contact_id.as_str()).collect();
        assert_eq!(ids, ["a", "e"]);
        let rest = db.store_records_held("twenty", Some("e"), 2).unwrap();
        let ids: Vec<&str> = rest.iter().map(|r| r.contact_id.as_str()).collect();
        assert_eq!(ids, ["f"]);
        assert_eq!(rest[0].native_id.as_deref(), Some("p-f"));
    }
}
