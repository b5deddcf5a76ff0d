//! AWS SDK attribute values → DynamoDB JSON text, the wire form Lambda delivers, so items read
//! with the SDK (the event-source runner's GetRecords, the backfill's Scan) go through the same
//! conversion as stream records. `serde_dynamo` converts the SDK's types (numbers stay text,
//! binaries bytes, written as base64); the text goes through `serde_json::Value`, whose maps are
//! ordered, so the same item always gives the same text and document, names sorted at every
//! level.

use std::collections::HashMap;

macro_rules! writer {
    ($name:ident, $item:ident, $av:ty, $m:path) => {
        /// Writes one attribute value as DynamoDB JSON (`{"S":"x"}`, `{"N":"1"}`, …). A value
        /// holding a type this SDK version does not know (where `serde_dynamo` would panic) is
        /// written as `{"UNKNOWN":null}`, which the converter refuses with a reason naming the
        /// attribute.
        pub fn $name(out: &mut String, value: &$av) {
            use $m as A;
            fn known(value: &$av) -> bool {
                match value {
                    A::M(m) => m.values().all(known),
                    A::L(l) => l.iter().all(known),
                    A::S(_)
                    | A::N(_)
                    | A::B(_)
                    | A::Bool(_)
                    | A::Null(_)
                    | A::Ss(_)
                    | A::Ns(_)
                    | A::Bs(_) => true,
                    _ => false,
                }
            }
            if !known(value) {
                out.push_str("{\"UNKNOWN\":null}");
                return;
            }
            let value = serde_dynamo::AttributeValue::from(value.clone());
            let text = serde_json::to_value(&value)
                .and_then(|v| serde_json::to_string(&v))
                .expect("an attribute value serializes");
            out.push_str(&text);
        }

        /// Writes an item (attribute name → value) as a DynamoDB JSON object, names sorted.
        pub fn $item(out: &mut String, item: &HashMap<String, $av>) {
            out.push('{');
            let mut names: Vec<&String> = item.keys().collect();
            names.sort();
            for (i, name) in names.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(name).expect("a string serializes"));
                out.push(':');
                $name(out, &item[name]);
            }
            out.push('}');
        }
    };
}

/// Table items (Scan, GetItem).
pub mod table {
    use super::*;
    writer!(
        write_value,
        write_item,
        aws_sdk_dynamodb::types::AttributeValue,
        aws_sdk_dynamodb::types::AttributeValue
    );
}

/// Stream records (GetRecords).
pub mod stream {
    use super::*;
    writer!(
        write_value,
        write_item,
        aws_sdk_dynamodbstreams::types::AttributeValue,
        aws_sdk_dynamodbstreams::types::AttributeValue
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::AttributeValue as A;

    #[test]
    fn writes_every_type_as_lambda_delivers_it() {
        let mut item = HashMap::new();
        item.insert("s".to_string(), A::S("a\"é".into()));
        item.insert("n".to_string(), A::N("1E+30".into()));
        item.insert("b".to_string(), A::B(Blob::new(vec![0u8, 1, 255])));
        item.insert("t".to_string(), A::Bool(true));
        item.insert("z".to_string(), A::Null(true));
        item.insert(
            "l".to_string(),
            A::L(vec![A::S("x".into()), A::M(HashMap::new())]),
        );
        item.insert("ss".to_string(), A::Ss(vec!["a".into()]));
        item.insert("ns".to_string(), A::Ns(vec!["1".into(), "2.5".into()]));
        item.insert("bs".to_string(), A::Bs(vec![Blob::new(vec![1u8])]));
        let mut out = String::new();
        table::write_item(&mut out, &item);
        assert_eq!(
            out,
            r#"{"b":{"B":"AAH/"},"bs":{"BS":["AQ=="]},"l":{"L":[{"S":"x"},{"M":{}}]},"n":{"N":"1E+30"},"ns":{"NS":["1","2.5"]},"s":{"S":"a\"é"},"ss":{"SS":["a"]},"t":{"BOOL":true},"z":{"NULL":true}}"#
        );
        let mut doc = Vec::new();
        crate::pipeline::convert::write_document(&out, &mut doc).unwrap();
        assert_eq!(
            String::from_utf8(doc).unwrap(),
            r#"{"b":"AAH/","bs":["AQ=="],"l":["x",{}],"n":1E+30,"ns":[1,2.5],"s":"a\"é","ss":["a"],"t":true,"z":null}"#
        );
    }
}
