//! AWS SDK attribute values → DynamoDB JSON text, the wire form Lambda delivers, so items read
//! with the SDK (the event-source runner's GetRecords, the backfill's Scan) go through the same
//! conversion as stream records. By hand because the SDK types do not implement serde.

use std::collections::HashMap;

use base64::Engine as _;

use crate::pipeline::convert::write_json_str;

macro_rules! writer {
    ($name:ident, $item:ident, $av:ty, $m:path) => {
        /// Writes one attribute value as DynamoDB JSON (`{"S":"x"}`, `{"N":"1"}`, …).
        pub fn $name(out: &mut String, value: &$av) {
            use $m as A;
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            let mut buf = Vec::new();
            let mut s = |out: &mut String, text: &str| {
                buf.clear();
                write_json_str(&mut buf, text);
                out.push_str(std::str::from_utf8(&buf).expect("escaped JSON is UTF-8"));
            };
            match value {
                A::S(v) => {
                    out.push_str("{\"S\":");
                    s(out, v);
                }
                A::N(v) => {
                    out.push_str("{\"N\":");
                    s(out, v);
                }
                A::B(v) => {
                    out.push_str("{\"B\":\"");
                    out.push_str(&b64(v.as_ref()));
                    out.push('"');
                }
                A::Bool(v) => out.push_str(if *v {
                    "{\"BOOL\":true"
                } else {
                    "{\"BOOL\":false"
                }),
                A::Null(_) => out.push_str("{\"NULL\":true"),
                A::M(m) => {
                    out.push_str("{\"M\":");
                    $item(out, m);
                }
                A::L(l) => {
                    out.push_str("{\"L\":[");
                    for (i, v) in l.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        $name(out, v);
                    }
                    out.push(']');
                }
                A::Ss(l) | A::Ns(l) => {
                    out.push_str(if matches!(value, A::Ss(_)) {
                        "{\"SS\":["
                    } else {
                        "{\"NS\":["
                    });
                    for (i, v) in l.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        s(out, v);
                    }
                    out.push(']');
                }
                A::Bs(l) => {
                    out.push_str("{\"BS\":[");
                    for (i, v) in l.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push('"');
                        out.push_str(&b64(v.as_ref()));
                        out.push('"');
                    }
                    out.push(']');
                }
                // A type this SDK version does not know: written as an unknown type, which the
                // converter refuses with a reason naming the attribute.
                _ => out.push_str("{\"UNKNOWN\":null"),
            }
            out.push('}');
        }

        /// Writes an item (attribute name → value) as a DynamoDB JSON object.
        pub fn $item(out: &mut String, item: &HashMap<String, $av>) {
            out.push('{');
            // Sorted, so the same item always gives the same text and document.
            let mut names: Vec<&String> = item.keys().collect();
            names.sort();
            let mut buf = Vec::new();
            for (i, name) in names.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                buf.clear();
                write_json_str(&mut buf, name);
                out.push_str(std::str::from_utf8(&buf).expect("escaped JSON is UTF-8"));
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
