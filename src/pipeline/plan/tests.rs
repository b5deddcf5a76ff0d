//! Planning: fixtures, properties and the two readings against each other.

use super::*;
use proptest::prelude::{Strategy, any, prop};

/// One index, every attribute, no metadata.
fn shape() -> Shape<'static> {
    static ROUTER: std::sync::LazyLock<Router> = std::sync::LazyLock::new(|| Router::single("t"));
    static PROJECTION: std::sync::LazyLock<Projection> =
        std::sync::LazyLock::new(Projection::default);
    static METADATA: std::sync::LazyLock<Metadata> = std::sync::LazyLock::new(Metadata::default);
    Shape {
        router: &ROUTER,
        projection: &PROJECTION,
        metadata: &METADATA,
    }
}

/// A stream record with the given pieces (Keys and images as DynamoDB JSON text).
fn record(seq: &str, name: &str, time: &str, keys: &str, image: Option<&str>) -> String {
    let image = image.map_or(String::new(), |i| format!(",\"NewImage\":{i}"));
    format!(
        r#"{{"eventID":"e{seq}","eventName":"{name}","dynamodb":{{"ApproximateCreationDateTime":{time},"Keys":{keys},"SequenceNumber":"{seq}"{image}}}}}"#
    )
}

const KEYS: &str = r#"{"pk":{"S":"a"}}"#;

fn batch(records: &[String]) -> String {
    format!("{{\"Records\":[{}]}}", records.join(","))
}

fn reasons(payload: &str) -> Vec<Option<String>> {
    plan(payload, &VersionSource::StreamTime, &shape(), 1 << 20)
        .unwrap()
        .records
        .into_iter()
        .map(|r| match r.disposition {
            Disposition::Invalid(reason) => Some(reason),
            _ => None,
        })
        .collect()
}

fn good() -> String {
    record(
        "1",
        "INSERT",
        "1700000000",
        KEYS,
        Some(r#"{"pk":{"S":"a"},"n":{"N":"1"}}"#),
    )
}

#[test]
fn only_objects_make_a_batch_and_its_records() {
    let r = good();
    assert!(
        plan(
            &format!("[[{r}]]"),
            &VersionSource::StreamTime,
            &shape(),
            1 << 20
        )
        .is_err()
    );
    assert!(
        plan(
            &format!("[{r}]"),
            &VersionSource::StreamTime,
            &shape(),
            1 << 20
        )
        .is_err()
    );
    let as_array = r#"["e1","INSERT",null,null,{"Keys":{"pk":{"S":"a"}}}]"#.to_string();
    let got = reasons(&batch(&[good(), as_array, "7".into()]));
    assert_eq!(got[0], None);
    assert!(
        got[1]
            .as_deref()
            .unwrap()
            .contains("expected a JSON object"),
        "{got:?}"
    );
    assert!(got[2].is_some());
    let dynamodb_array = r#"{"eventID":"e2","eventName":"INSERT","dynamodb":["x"]}"#;
    let got = reasons(&batch(&[good(), dynamodb_array.into()]));
    assert!(
        got[1]
            .as_deref()
            .unwrap()
            .contains("expected a JSON object"),
        "{got:?}"
    );
}

#[test]
fn a_mistyped_optional_field_keeps_the_records_identity() {
    let image = Some(r#"{"pk":{"S":"a"}}"#);
    let cases = [
        record("2", "INSERT", "\"1700000000\"", KEYS, image),
        good().replace(r#""eventID""#, r#""userIdentity":"svc","eventID""#),
        good().replace(
            r#""dynamodb":{"#,
            r#""dynamodb":{"SequenceNumber":"0"},"dynamodb":{"#,
        ),
    ];
    for case in cases {
        let payload = batch(&[good(), case.clone()]);
        let p = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20).unwrap();
        let r = &p.records[1];
        assert!(matches!(r.disposition, Disposition::Invalid(_)), "{case}");
        assert!(
            r.sequence_number
                .as_deref()
                .is_some_and(|s| s == "1" || s == "2"),
            "{case}: {:?}",
            r.sequence_number.as_deref()
        );
        assert!(r.event_id.is_some(), "{case}");
    }
}

#[test]
fn a_creation_time_ahead_of_the_clock_is_refused() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let image = Some(r#"{"pk":{"S":"a"}}"#);
    let millis = (now * 1000).to_string();
    let hour_ahead = (now + 3600).to_string();
    let minute_ahead = (now + 60).to_string();
    let got = reasons(&batch(&[
        record("1", "INSERT", &millis, KEYS, image),
        record("2", "MODIFY", &hour_ahead, KEYS, image),
        record("3", "REMOVE", &hour_ahead, r#"{"pk":{"S":"c"}}"#, None),
        record(
            "4",
            "INSERT",
            &minute_ahead,
            r#"{"pk":{"S":"d"}}"#,
            Some(r#"{"pk":{"S":"d"}}"#),
        ),
    ]));
    for r in &got[..3] {
        assert!(r.as_deref().unwrap().contains("ahead of now"), "{got:?}");
    }
    assert_eq!(got[3], None, "within the allowed skew");
}

#[test]
fn a_batchs_lines_lie_side_by_side_and_a_record_that_plans_nothing_leaves_none() {
    let insert = |seq: &str, key: &str, image_key: &str| {
        let keys = format!(r#"{{"pk":{{"S":"{key}"}}}}"#);
        let image = format!(r#"{{"pk":{{"S":"{image_key}"}},"n":{{"N":"{seq}"}}}}"#);
        record(seq, "INSERT", "1700000000", &keys, Some(&image))
    };
    let payload = batch(&[
        insert("1", "a", "a"),
        // Converted as it is read, then refused: its image names another key.
        insert("2", "b", "x"),
        // A REMOVE carrying a NewImage, converted as it is read and not used.
        record(
            "3",
            "REMOVE",
            "1700000000",
            r#"{"pk":{"S":"c"}}"#,
            Some(r#"{"pk":{"S":"c"}}"#),
        ),
        insert("4", "d", "d"),
    ]);
    let plan = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20).unwrap();
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    let each: Vec<String> = plan.changes.iter().map(|c| text(&c.lines)).collect();
    assert_eq!(
        each,
        [
            "{\"index\":{\"_id\":\"a\",\"version\":1700000000000,\"version_type\":\"external_gte\"}}\n{\"pk\":\"a\",\"n\":1}\n",
            "{\"delete\":{\"_id\":\"c\",\"version\":1700000000000,\"version_type\":\"external_gte\"}}\n",
            "{\"index\":{\"_id\":\"d\",\"version\":1700000000000,\"version_type\":\"external_gte\"}}\n{\"pk\":\"d\",\"n\":4}\n",
        ]
    );
    let lines: Vec<&Lines> = plan.changes.iter().map(|c| &c.lines).collect();
    let joined = lines[1..]
        .iter()
        .try_fold(lines[0].clone(), |all, next| all.joined(next))
        .expect("one batch's lines lie side by side");
    assert_eq!(text(&joined.bytes()), each.concat());
    // A body of all of them is a slice of the plan's buffer; of some, a copy.
    let bodies = crate::pipeline::bulk::pack(&plan.changes, &[0, 1, 2], 1 << 20, 100);
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].bytes.as_ptr(), lines[0].as_ptr());
    assert_eq!(text(&bodies[0].bytes), each.concat());
    let bodies = crate::pipeline::bulk::pack(&plan.changes, &[0, 2], 1 << 20, 100);
    assert_eq!(text(&bodies[0].bytes), format!("{}{}", each[0], each[2]));
}

#[test]
fn keys_must_name_each_attribute_once_and_agree_with_the_image() {
    let cases = [
        (
            r#"{"pk":{"S":"a"},"pk":{"S":"b"}}"#,
            r#"{"pk":{"S":"a"}}"#,
            "more than once",
        ),
        (KEYS, r#"{"pk":{"S":"b"}}"#, "different values"),
        (KEYS, r#"{"pk":{"N":"1"}}"#, "is S in Keys but N"),
        (KEYS, r#"{"other":{"S":"a"}}"#, "lacks the key attribute pk"),
        (
            r#"{"pk":{"N":"1.0"}}"#,
            r#"{"pk":{"N":"2"}}"#,
            "different values",
        ),
        (
            r#"{"pk":{"S":"\ud800"}}"#,
            r#"{"pk":{"S":"a"}}"#,
            "key attribute pk:",
        ),
    ];
    for (keys, image, expected) in cases {
        let got = reasons(&batch(&[record(
            "1",
            "INSERT",
            "1700000000",
            keys,
            Some(image),
        )]));
        let reason = got[0].as_deref().unwrap_or("accepted");
        assert!(reason.contains(expected), "{keys} {image}: {reason}");
    }
    let same = reasons(&batch(&[record(
        "1",
        "INSERT",
        "1700000000",
        r#"{"pk":{"N":"1.0"},"sk":{"S":"x\"y"}}"#,
        Some(r#"{"sk":{"S":"x\u0022y"},"pk":{"N":"1"}}"#),
    )]));
    assert_eq!(same[0], None, "equal values in other spellings agree");
    let same = reasons(&batch(&[record(
        "1",
        "INSERT",
        "1700000000",
        r#"{"pk":{"N":"1E+2"},"sk":{"N":"100"}}"#,
        Some(r#"{"sk":{"N":"1E+2"},"pk":{"N":"100"}}"#),
    )]));
    assert_eq!(
        same[0], None,
        "a number agrees with its canonical text either way"
    );
}

#[test]
fn of_two_changes_of_one_key_the_higher_version_wins_whatever_the_order() {
    let modify = |seq: &str, time: &str, v: u32| {
        let image = format!(r#"{{"pk":{{"S":"a"}},"v":{{"N":"{v}"}}}}"#);
        record(seq, "MODIFY", time, KEYS, Some(&image))
    };
    let payload = batch(&[modify("9", "1700000100", 2), modify("5", "1700000000", 1)]);
    let p = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20).unwrap();
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].record, 0, "the newer change is sent");
    assert_eq!(p.records[1].disposition, Disposition::Superseded(0));
    // Equal versions: batch order decides (two changes in one second of stream time).
    let payload = batch(&[modify("5", "1700000000", 1), modify("6", "1700000000", 2)]);
    let p = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20).unwrap();
    assert_eq!(p.changes[0].record, 1);
}

#[test]
fn an_item_attribute_named_like_the_raw_key_field_is_refused_when_the_key_is_hashed() {
    let long = "k".repeat(600);
    let keys = format!(r#"{{"pk":{{"S":"{long}"}}}}"#);
    let image = format!(r#"{{"pk":{{"S":"{long}"}},"{RAW_KEY_FIELD}":{{"S":"mine"}}}}"#);
    let got = reasons(&batch(&[record(
        "1",
        "INSERT",
        "1700000000",
        &keys,
        Some(&image),
    )]));
    assert!(
        got[0].as_deref().unwrap().contains(RAW_KEY_FIELD),
        "{got:?}"
    );
    let short = format!(r#"{{"pk":{{"S":"a"}},"{RAW_KEY_FIELD}":{{"S":"mine"}}}}"#);
    let got = reasons(&batch(&[record(
        "1",
        "INSERT",
        "1700000000",
        KEYS,
        Some(&short),
    )]));
    assert_eq!(got[0], None, "with a short key the field is the item's own");
}

/// Everything a plan decides, as text to compare.
fn outcome(result: Result<Plan<'_>, NotAStreamEvent>) -> String {
    let plan = match result {
        Ok(plan) => plan,
        Err(e) => return format!("not a stream event: {e}"),
    };
    let records: Vec<String> = plan
        .records
        .iter()
        .map(|r| {
            format!(
                "{:?} {:?} {:?} {:?} {:?}",
                r.sequence_number, r.event_id, r.disposition, r.extra, r.created_secs
            )
        })
        .collect();
    let changes: Vec<String> = plan
        .changes
        .iter()
        .map(|c| {
            format!(
                "{} {} {:?} {:?} {} {} {}",
                c.index,
                c.id,
                c.action,
                c.version,
                c.ttl,
                String::from_utf8_lossy(&c.lines),
                c.record
            )
        })
        .collect();
    format!("{records:#?}\n{changes:#?}")
}

/// Records as streams send them and as crafted input might: escapes, nulls, repeated and
/// unknown fields, REMOVEs with images, images serde reads but the fast path leaves to the
/// walk, and one that nests past serde's limit.
fn record_text() -> impl Strategy<Value = String> {
    let deep = format!(
        r#"{{"eventID":"d","eventName":"INSERT","dynamodb":{{"ApproximateCreationDateTime":1700000000,"Keys":{KEYS},"SequenceNumber":"9","NewImage":{{"pk":{{"S":"a"}},"m":{}{{"N":"1"}}{}}}}}}}"#,
        r#"{"M":{"x":"#.repeat(70),
        "}}".repeat(70)
    );
    prop::sample::select(vec![
        good(),
        r#"{"eventID":"e2","eventName":"MODIFY","eventVersion":"1.1","awsRegion":"eu-west-1","userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"},"dynamodb":{"ApproximateCreationDateTime":1700000001,"Keys":{"pk":{"S":"b"}},"NewImage":{"pk":{"S":"b"},"kind":{"S":"a1"},"t":{"SS":["x","y"]},"l":{"L":[{"N":"1.50"},{"NULL":true}]}},"OldImage":{"pk":{"S":"b"},"kind":{"S":"b1"}},"SequenceNumber":"2","SizeBytes":90,"StreamViewType":"NEW_AND_OLD_IMAGES"},"eventSourceARN":"arn:aws:dynamodb:eu-west-1:1:table/t/stream/x"}"#.to_string(),
        r#"{"eventID":"e3","eventName":"REMOVE","userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"},"dynamodb":{"ApproximateCreationDateTime":1700000002,"Keys":{"pk":{"S":"a"}},"OldImage":{"pk":{"S":"a"},"kind":{"S":"a"}},"SequenceNumber":"3"}}"#.to_string(),
        r#"{"eventID":"e\"4","eventName":"INS\u0045RT","dynamodb":{"ApproximateCreationDateTime":1700000003.75,"Keys":{"pk":{"S":"c"}},"NewImage":{"pk":{"S":"c"},"s":{"S":"\u00e9\n\t\"q\""}},"SequenceNumber":"4"}}"#.to_string(),
        r#"{"eventID":null,"eventName":"MODIFY","userIdentity":null,"dynamodb":{"ApproximateCreationDateTime":null,"Keys":{"pk":{"S":"d"}},"NewImage":null,"OldImage":null,"SequenceNumber":"5"}}"#.to_string(),
        r#"{"eventID":"e6","eventName":"INSERT","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1700000004,"Keys":{"pk":{"S":"e"}},"NewImage":{"pk":{"S":"e"}},"SequenceNumber":"6"}}"#.to_string(),
        r#"{"eventID":"e7","eventName":"REMOVE","dynamodb":{"ApproximateCreationDateTime":1700000005,"Keys":{"pk":{"S":"f"}},"NewImage":{"pk":{"S":"f"},"x":[1,{"y":null}]},"SequenceNumber":"7"}}"#.to_string(),
        r#"{"eventID":"e8","eventName":"INSERT","other":{"a":[true,false,null,-1.5e3,"\u0000"]},"dynamodb":{"ApproximateCreationDateTime":1700000006,"Keys":{"pk":{"S":"g"}},"NewImage":{"pk":{"S":"g"},"b":{"B":"AA=="},"bad":{"N":"1e999"}},"SequenceNumber":"8"}}"#.to_string(),
        " { \"eventID\" : \"e9\" , \"eventName\" : \"INSERT\" , \"dynamodb\" : { \"ApproximateCreationDateTime\" : 1700000007 , \"Keys\" : { \"pk\" : { \"S\" : \"h\" } } , \"NewImage\" : { \"pk\" : { \"S\" : \"h\" } , \"n\" : { \"N\" : \"-0.5\" } } , \"SequenceNumber\" : \"9\" } } ".to_string(),
        deep,
        // Two key attributes named out of order, the Keys before or after the NewImage,
        // and a key name with an escape.
        r#"{"eventID":"e10","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1700000008,"Keys":{"sk":{"N":"2"},"pk":{"S":"i"}},"NewImage":{"pk":{"S":"i"},"sk":{"N":"2"},"n":{"N":"3"},"kind":{"S":"ab"}},"SequenceNumber":"10"}}"#.to_string(),
        r#"{"eventID":"e11","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1700000009,"NewImage":{"pk":{"S":"i"},"sk":{"N":"2"},"n":{"N":"4"}},"Keys":{"sk":{"N":"2"},"pk":{"S":"i"}},"SequenceNumber":"11"}}"#.to_string(),
        r#"{"eventID":"e12","eventName":"INSERT","dynamodb":{"ApproximateCreationDateTime":1700000010,"Keys":{"p\u006b":{"S":"j"}},"NewImage":{"pk":{"S":"j"},"n":{"N":"5"}},"SequenceNumber":"12"}}"#.to_string(),
    ])
}

/// A few one-byte edits at char boundaries: deleted, or replaced or preceded by a byte that
/// matters to JSON.
fn mutate(text: &str, edits: &[(prop::sample::Index, u8, u8)]) -> String {
    let mut text = text.to_string();
    for (at, kind, byte) in edits {
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let i = bounds[at.index(bounds.len())];
        let c = [
            b'{', b'}', b'[', b']', b'"', b',', b':', b'\\', b'n', b'1', 1u8, b' ',
        ][*byte as usize % 12] as char;
        let width = text[i..].chars().next().map_or(0, char::len_utf8);
        match kind % 3 {
            0 => text.replace_range(i..i + width, ""),
            1 => text.replace_range(i..i + width, &c.to_string()),
            _ => text.insert(i, c),
        }
    }
    text
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, failure_persistence: None, ..Default::default() })]
    /// The one-pass reading (records by hand, each NewImage read only by its conversion)
    /// plans exactly what serde's reading plans, for whole, broken and crafted events, one
    /// index or routed on an attribute of the images.
    #[test]
    fn the_one_pass_plan_is_the_serde_plan(
        records in prop::collection::vec(record_text(), 0..5),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 0..3),
        routed in any::<bool>(),
        by_attribute in any::<bool>(),
    ) {
        let payload = mutate(&batch(&records), &edits);
        let router = if routed {
            Router::parse(Some("t"), Some(r#"[{"when":{"attribute":"kind","prefix":"a"},"index":"ta"}]"#)).unwrap()
        } else {
            Router::single("t")
        };
        let base = shape();
        let shape = Shape { router: &router, ..base };
        // Versions from the stream put the action line in front of a converted document;
        // from an attribute, after it.
        let versions = if by_attribute {
            VersionSource::Attribute("n".into())
        } else {
            VersionSource::StreamTime
        };
        let planner = Planner { versions: &versions, shape: &shape, max_lines_bytes: 1 << 20, now_secs: 1_800_000_000 };
        let by_serde = parse(&payload).map(|parsed| planner.plan(&payload, parsed, false).unwrap());
        let one_pass = planner.plan_in_one_pass(&payload);
        // Where the one pass gives up, `plan` takes serde's reading: equal by construction.
        if let Some(one_pass) = one_pass {
            proptest::prop_assert_eq!(outcome(Ok(one_pass)), outcome(by_serde), "{}", payload);
        }
    }
}

#[test]
fn an_event_as_streams_send_it_is_read_in_one_pass() {
    let payload = batch(&[good(), good().replace("\"1\"", "\"2\"")]);
    let shape = shape();
    let planner = Planner {
        versions: &VersionSource::StreamTime,
        shape: &shape,
        max_lines_bytes: 1 << 20,
        now_secs: 1_800_000_000,
    };
    let mut early = EarlyState::default();
    let mut buffer = Vec::new();
    let mut records = Vec::new();
    event::read(
        &payload,
        |keys, text| planner.early_image(&mut early, &mut buffer, keys, text),
        |record| {
            records.push(record);
            Some(())
        },
    )
    .unwrap();
    // Each NewImage converted where the reading met it (its Keys come first).
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.dynamodb.as_ref().unwrap().0.early.is_some())
    );
}

/// The one pass reads a NewImage only by converting it, so its conversion must refuse
/// what serde's parse of the event refuses: then the batch is what serde says it is.
#[test]
fn an_image_that_is_not_json_is_judged_as_serde_judges_the_event() {
    for image in [
        "{\"pk\":{\"S\":\"a\"},\"s\":{\"S\":\"x\u{1}y\"}}",
        r#"{"pk":{"S":"a"},"s":{"S":"a\qb"}}"#,
        r#"{"pk":{"S":"a"},"s":{"S":"a"},}"#,
        r#"{"pk":{"S":"a"},"s":{"N":"1"} "#,
    ] {
        let payload = batch(&[record("1", "INSERT", "1700000000", KEYS, Some(image))]);
        let got = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20);
        assert!(
            matches!(&got, Err(NotAStreamEvent(_))),
            "{image}: {}",
            outcome(got)
        );
    }
    let remove = batch(&[record("1", "REMOVE", "1700000000", KEYS, Some(r#"{"a":}"#))]);
    let got = plan(&remove, &VersionSource::StreamTime, &shape(), 1 << 20);
    assert!(matches!(got, Err(NotAStreamEvent(_))));
}

/// An image nested far past serde's recursion limit is refused with a reason, not followed
/// down the stack (6 MB of `{"M":` would overflow it).
#[test]
fn a_deeply_nested_image_is_refused_not_overflowing_the_stack() {
    let n = 200_000;
    let image = format!(
        r#"{{"pk":{{"S":"a"}},"m":{}{{"N":"1"}}{}}}"#,
        r#"{"M":{"x":"#.repeat(n),
        "}}".repeat(n)
    );
    let got = reasons(&batch(&[
        record("1", "INSERT", "1700000000", KEYS, Some(&image)),
        good(),
    ]));
    assert!(
        got[0]
            .as_deref()
            .is_some_and(|r| r.contains("recursion limit")),
        "{:?}",
        got[0]
    );
    assert_eq!(got[1], None);
}
