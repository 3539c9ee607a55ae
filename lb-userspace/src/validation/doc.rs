//! A request body as the validator reads it: JSON parsed into three flat arrays (values,
//! object members, array elements) with strings borrowed from the body where they have no
//! escapes. Parsing a 1 KiB body this way allocates a handful of vectors instead of a map and
//! a string per object and key (`serde_json::Value`), which cost several times the schema
//! check itself. `jsonschema` validates it through its `Json` representation traits.

use std::borrow::Cow;
use std::fmt;

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One value of a document.
#[derive(Debug, Clone)]
enum Item<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Cow<'a, str>),
    /// Elements `start..start + len` of [`Doc::elements`].
    Array(u32, u32),
    /// Members `start..start + len` of [`Doc::members`].
    Object(u32, u32),
}

/// The most values a body may hold: each takes 32 bytes here, so a dense array (`[0,0,…]`)
/// cannot make one request's document much larger than a few MiB.
pub const MAX_VALUES: usize = 1 << 17;

/// A parsed JSON document; its root is the last value pushed.
#[derive(Debug, Default)]
pub struct Doc<'a> {
    items: Vec<Item<'a>>,
    members: Vec<(Cow<'a, str>, u32)>,
    elements: Vec<u32>,
    root: u32,
}

impl<'a> Doc<'a> {
    /// Parses JSON text (serde_json's grammar and nesting limit).
    pub fn parse(text: &'a [u8]) -> Result<Doc<'a>, serde_json::Error> {
        // Roughly one value per 16 bytes of text: most bodies fill these with little growth.
        let mut doc = Doc {
            items: Vec::with_capacity((text.len() / 16 + 1).min(MAX_VALUES)),
            members: Vec::with_capacity((text.len() / 24 + 1).min(MAX_VALUES)),
            elements: Vec::new(),
            root: 0,
        };
        let mut stack = Stack::default();
        let mut de = serde_json::Deserializer::from_slice(text);
        let root = Seed {
            doc: &mut doc,
            stack: &mut stack,
        }
        .deserialize(&mut de)?;
        de.end()?;
        doc.root = root;
        Ok(doc)
    }

    /// A document of one value, borrowing its strings.
    pub fn of(value: &'a Value) -> Doc<'a> {
        let mut doc = Doc::default();
        doc.root = doc.push_value(value);
        doc
    }

    fn push_value(&mut self, v: &'a Value) -> u32 {
        let item = match v {
            Value::Null => Item::Null,
            Value::Bool(b) => Item::Bool(*b),
            Value::Number(n) => Item::Number(n.clone()),
            Value::String(s) => Item::Str(Cow::Borrowed(s)),
            Value::Array(a) => {
                let children: Vec<u32> = a.iter().map(|c| self.push_value(c)).collect();
                let start = self.elements.len() as u32;
                self.elements.extend(children);
                Item::Array(start, a.len() as u32)
            }
            Value::Object(o) => {
                let children: Vec<(Cow<'a, str>, u32)> = o
                    .iter()
                    .map(|(k, c)| (Cow::Borrowed(k.as_str()), self.push_value(c)))
                    .collect();
                let start = self.members.len() as u32;
                self.members.extend(children);
                Item::Object(start, o.len() as u32)
            }
        };
        self.push(item)
    }

    fn push(&mut self, item: Item<'a>) -> u32 {
        self.items.push(item);
        (self.items.len() - 1) as u32
    }

    /// Pushes a parsed value, refusing a document of more than [`MAX_VALUES`].
    fn add<E: serde::de::Error>(&mut self, item: Item<'a>) -> Result<u32, E> {
        if self.items.len() >= MAX_VALUES {
            return Err(E::custom(format_args!(
                "more than {MAX_VALUES} values in one body"
            )));
        }
        Ok(self.push(item))
    }

    /// The root value.
    pub fn root(&self) -> DocNode<'_> {
        DocNode {
            doc: self,
            idx: self.root,
        }
    }
}

/// Children of the containers being parsed: a container's own sit above its mark until it
/// ends, then move to the document in one piece, so each container's are contiguous.
#[derive(Default)]
struct Stack<'a> {
    elements: Vec<u32>,
    members: Vec<(Cow<'a, str>, u32)>,
}

struct Seed<'d, 'a> {
    doc: &'d mut Doc<'a>,
    stack: &'d mut Stack<'a>,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Seed<'_, 'a> {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_any(self)
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(KeyVisitor).map(Key)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Seed<'_, 'a> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<u32, E> {
        self.doc.add(Item::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<u32, E> {
        self.doc.add(Item::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<u32, E> {
        self.doc.add(Item::Bool(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
        self.doc.add(Item::Number(v.into()))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
        self.doc.add(Item::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u32, E> {
        let n = serde_json::Number::from_f64(v).ok_or_else(|| E::custom("not a finite number"))?;
        self.doc.add(Item::Number(n))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<u32, E> {
        self.doc.add(Item::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u32, E> {
        self.doc.add(Item::Str(Cow::Owned(v.to_string())))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<u32, E> {
        self.doc.add(Item::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        let mark = self.stack.elements.len();
        loop {
            let seed = Seed {
                doc: &mut *self.doc,
                stack: &mut *self.stack,
            };
            match seq.next_element_seed(seed)? {
                Some(i) => self.stack.elements.push(i),
                None => break,
            }
        }
        let start = self.doc.elements.len() as u32;
        let len = (self.stack.elements.len() - mark) as u32;
        self.doc.elements.extend(self.stack.elements.drain(mark..));
        self.doc.add(Item::Array(start, len))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        use serde::de::Error;
        let mark = self.stack.members.len();
        // Past a few members, names are found in a set rather than by a scan.
        let mut seen: Option<std::collections::HashSet<Cow<'a, str>>> = None;
        while let Some(Key(key)) = map.next_key::<Key<'a>>()? {
            // A repeated member is refused: parsers disagree on which one counts (most keep
            // the last), so the backend could read a value the schema never saw.
            let ours = &self.stack.members[mark..];
            let repeated = match seen.as_mut() {
                Some(set) => !set.insert(key.clone()),
                None if ours.len() < 16 => ours.iter().any(|(k, _)| *k == key),
                None => {
                    let mut set: std::collections::HashSet<Cow<'a, str>> =
                        ours.iter().map(|(k, _)| k.clone()).collect();
                    let repeated = !set.insert(key.clone());
                    seen = Some(set);
                    repeated
                }
            };
            if repeated {
                return Err(A::Error::custom(format_args!(
                    "the member {key:?} appears twice"
                )));
            }
            let seed = Seed {
                doc: &mut *self.doc,
                stack: &mut *self.stack,
            };
            let i = map.next_value_seed(seed)?;
            self.stack.members.push((key, i));
        }
        let start = self.doc.members.len() as u32;
        let len = (self.stack.members.len() - mark) as u32;
        self.doc.members.extend(self.stack.members.drain(mark..));
        self.doc.add(Item::Object(start, len))
    }
}

/// `jsonschema`'s view of a [`Doc`].
pub struct Body;

impl Json for Body {
    type Node<'a> = DocNode<'a>;
    type PreparedKey = String;
    type StringBuffer = Doc<'static>;

    // A lookup scans the members: a members pass is never dearer. (jsonschema multiplies
    // this: large, not the maximum.)
    const KEYS_PER_LOOKUP: usize = 1 << 20;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>(
        buffer: &mut Doc<'static>,
        string: &str,
        f: impl FnOnce(DocNode<'_>) -> T,
    ) -> T {
        buffer.items.clear();
        buffer.items.push(Item::Str(Cow::Owned(string.to_owned())));
        buffer.root = 0;
        f(buffer.root())
    }
}

/// A value of a [`Doc`].
#[derive(Clone, Copy)]
pub struct DocNode<'a> {
    doc: &'a Doc<'a>,
    idx: u32,
}

impl<'a> DocNode<'a> {
    fn item(&self) -> &'a Item<'a> {
        &self.doc.items[self.idx as usize]
    }

    fn at(&self, idx: u32) -> DocNode<'a> {
        DocNode { doc: self.doc, idx }
    }
}

impl<'a> Node<'a, Body> for DocNode<'a> {
    type Object = Members<'a>;
    type Array = Elements<'a>;
    type Number = &'a serde_json::Number;

    fn as_object(&self) -> Option<Members<'a>> {
        match self.item() {
            Item::Object(start, len) => Some(Members {
                doc: self.doc,
                list: &self.doc.members[*start as usize..(*start + *len) as usize],
            }),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<Elements<'a>> {
        match self.item() {
            Item::Array(start, len) => Some(Elements {
                doc: self.doc,
                list: &self.doc.elements[*start as usize..(*start + *len) as usize],
            }),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.item() {
            Item::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a serde_json::Number> {
        match self.item() {
            Item::Number(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.item() {
            Item::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.item(), Item::Null)
    }

    fn json_type(&self) -> JsonType {
        match self.item() {
            Item::Null => JsonType::Null,
            Item::Bool(_) => JsonType::Boolean,
            Item::Number(_) => JsonType::Number,
            Item::Str(_) => JsonType::String,
            Item::Array(..) => JsonType::Array,
            Item::Object(..) => JsonType::Object,
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(match self.item() {
            Item::Null => Value::Null,
            Item::Bool(b) => Value::Bool(*b),
            Item::Number(n) => Value::Number(n.clone()),
            Item::Str(s) => Value::String(s.to_string()),
            Item::Array(..) => Value::Array(
                self.as_array()
                    .into_iter()
                    .flat_map(|a| a.elements())
                    .map(|e| e.to_value().into_owned())
                    .collect(),
            ),
            Item::Object(..) => Value::Object(
                self.as_object()
                    .into_iter()
                    .flat_map(|o| o.members())
                    .map(|(k, v)| (k.to_string(), v.to_value().into_owned()))
                    .collect(),
            ),
        })
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::tagged(
            std::ptr::from_ref(self.doc) as usize,
            self.idx,
        ))
    }
}

/// An object's members.
#[derive(Clone, Copy)]
pub struct Members<'a> {
    doc: &'a Doc<'a>,
    list: &'a [(Cow<'a, str>, u32)],
}

impl<'a> Object<'a, Body> for Members<'a> {
    type Node = DocNode<'a>;
    type MemberName = &'a str;
    type MembersIter = MembersIter<'a>;

    fn len(&self) -> usize {
        self.list.len()
    }

    fn get(&self, key: &String) -> Option<DocNode<'a>> {
        self.list
            .iter()
            .find(|(k, _)| k.as_ref() == key.as_str())
            .map(|(_, i)| DocNode {
                doc: self.doc,
                idx: *i,
            })
    }

    fn members(&self) -> MembersIter<'a> {
        MembersIter {
            doc: self.doc,
            list: self.list.iter(),
        }
    }
}

pub struct MembersIter<'a> {
    doc: &'a Doc<'a>,
    list: std::slice::Iter<'a, (Cow<'a, str>, u32)>,
}

impl<'a> Iterator for MembersIter<'a> {
    type Item = (&'a str, DocNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (k, i) = self.list.next()?;
        Some((
            k.as_ref(),
            DocNode {
                doc: self.doc,
                idx: *i,
            },
        ))
    }
}

/// An array's elements.
#[derive(Clone, Copy)]
pub struct Elements<'a> {
    doc: &'a Doc<'a>,
    list: &'a [u32],
}

impl<'a> Array<'a, Body> for Elements<'a> {
    type Node = DocNode<'a>;
    type ElementsIter = ElementsIter<'a>;

    fn len(&self) -> usize {
        self.list.len()
    }

    fn elements(&self) -> ElementsIter<'a> {
        ElementsIter {
            node: DocNode {
                doc: self.doc,
                idx: 0,
            },
            list: self.list.iter(),
        }
    }
}

pub struct ElementsIter<'a> {
    node: DocNode<'a>,
    list: std::slice::Iter<'a, u32>,
}

impl<'a> Iterator for ElementsIter<'a> {
    type Item = DocNode<'a>;

    fn next(&mut self) -> Option<DocNode<'a>> {
        self.list.next().map(|i| self.node.at(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_back_as_the_value_it_was_parsed_from() {
        let text =
            br#"{"a":[1,-2,3.5,{"b\n":"x\"y","c":[]}],"d":null,"e":true,"f":{},"g":"plain"}"#;
        let doc = Doc::parse(text).expect("parses");
        let value: Value = serde_json::from_slice(text).expect("serde");
        assert_eq!(doc.root().to_value().into_owned(), value);
        assert_eq!(Doc::of(&value).root().to_value().into_owned(), value);
        assert!(Doc::parse(b"{\"a\":1} x").is_err(), "trailing bytes");
        assert!(Doc::parse(b"{\"a\":").is_err());
        let dup = Doc::parse(br#"{"a":{"b":1,"c":2,"b":3}}"#).expect_err("a repeated member");
        assert!(dup.to_string().contains("\"b\" appears twice"), "{dup}");
        assert!(
            Doc::parse(br#"[{"b":1},{"b":2}]"#).is_ok(),
            "the same name in two objects"
        );
        let dense = format!("[{}0]", "0,".repeat(MAX_VALUES));
        assert!(Doc::parse(dense.as_bytes()).is_err(), "too many values");
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(
            Doc::parse(deep.as_bytes()).is_err(),
            "serde_json's nesting limit"
        );
    }
}
