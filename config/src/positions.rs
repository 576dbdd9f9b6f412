//! Where each key sits in the YAML text, so that every problem can say `line:column`.
//!
//! serde_yaml's `Value` forgets positions, so the text is read a second time with
//! yaml-rust2's event parser and its markers are kept in a small tree keyed like the
//! configuration (`providers.openai.api_key`, `provider_preference[1]`).

use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based place in the configuration text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn from_marker(mark: Marker) -> Self {
        // yaml-rust2 reports 1-based lines but 0-based columns.
        Self {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the configuration, printed as `providers.openai.deployments[0].api_key`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    pub(crate) fn key(&self, key: impl Into<String>) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.into()));
        Self(segs)
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    pub(crate) fn join(&self, rest: &KeyPath) -> Self {
        let mut segs = self.0.clone();
        segs.extend(rest.0.iter().cloned());
        Self(segs)
    }

    pub(crate) fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// Parses the printed form back; keys containing `.` or `[` cannot round-trip.
    pub(crate) fn parse(text: &str) -> Self {
        let mut segs = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
            if !key.is_empty() {
                segs.push(Seg::Key(key.to_owned()));
            }
            while let Some((number, tail)) = rest.split_once(']') {
                if let Ok(index) = number.parse() {
                    segs.push(Seg::Index(index));
                }
                rest = tail.trim_start_matches('[');
            }
        }
        Self(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Node {
    pos: Position,
    plain: bool,
    children: Children,
}

#[derive(Debug)]
enum Children {
    Leaf,
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
}

/// A path as the user spelled it, with the position of its deepest part that exists.
pub(crate) struct Resolved {
    pub(crate) spelled: KeyPath,
    pub(crate) pos: Option<Position>,
}

/// Key path -> line:column of the key (in a mapping) or of the item (in a sequence).
#[derive(Debug, Default)]
pub struct PositionIndex {
    root: Option<Node>,
    duplicate: Option<(KeyPath, Position)>,
}

/// Schema aliases whose spelling differs by more than case and underscores.
const ALIASES: &[(&str, &str)] = &[
    ("host", "bind_address"),
    ("base_url", "endpoint"),
    ("failure_threshold", "threshold"),
    ("max_size", "initial_size"),
];

fn loose(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn same_key(written: &str, wanted: &str) -> bool {
    written == wanted
        || loose(written) == loose(wanted)
        || ALIASES
            .iter()
            .any(|(a, b)| (*a == wanted && *b == written) || (*b == wanted && *a == written))
}

impl PositionIndex {
    /// Indexes `text`; text yaml-rust2 cannot read gives an empty index (serde_yaml reports it).
    pub fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self {
            root: builder.root,
            duplicate: builder.duplicate,
        }
    }

    /// Position of an exact dotted path such as `providers.openai.api_key` or `provider_preference[1]`.
    pub fn get(&self, path: &str) -> Option<Position> {
        self.find(&KeyPath::parse(path), false).map(|node| node.pos)
    }

    /// The first key written twice in one mapping, if any.
    pub(crate) fn duplicate(&self) -> Option<&(KeyPath, Position)> {
        self.duplicate.as_ref()
    }

    /// Whether the scalar at `path` was written unquoted; `None` when not indexed.
    pub(crate) fn is_plain_scalar(&self, path: &KeyPath) -> Option<bool> {
        self.find(path, false).map(|node| node.plain)
    }

    fn find(&self, path: &KeyPath, loosely: bool) -> Option<&Node> {
        let mut node = self.root.as_ref()?;
        for seg in &path.0 {
            node = step(node, seg, loosely)?.1;
        }
        Some(node)
    }

    /// Finds a canonical path (`circuit_breaker.max_requests`) however the user spelled it
    /// (`circuitBreaker.maxRequests`); missing tails keep their canonical names.
    pub(crate) fn resolve(&self, path: &KeyPath) -> Resolved {
        let mut spelled = Vec::with_capacity(path.0.len());
        let mut pos = None;
        let mut node = self.root.as_ref();
        for seg in &path.0 {
            match node.and_then(|n| step(n, seg, true)) {
                Some((written, next)) => {
                    spelled.push(written);
                    pos = Some(next.pos);
                    node = Some(next);
                }
                None => {
                    spelled.push(seg.clone());
                    node = None;
                }
            }
        }
        Resolved {
            spelled: KeyPath(spelled),
            pos,
        }
    }
}

fn step<'a>(node: &'a Node, seg: &Seg, loosely: bool) -> Option<(Seg, &'a Node)> {
    match (seg, &node.children) {
        (Seg::Key(key), Children::Map(entries)) => entries
            .iter()
            .find(|(written, _)| written == key)
            .or_else(|| {
                loosely
                    .then(|| entries.iter().find(|(written, _)| same_key(written, key)))
                    .flatten()
            })
            .map(|(written, child)| (Seg::Key(written.clone()), child)),
        (Seg::Index(index), Children::Seq(items)) => {
            items.get(*index).map(|child| (Seg::Index(*index), child))
        }
        _ => None,
    }
}

// === impl Builder ===

struct Frame {
    node: Node,
    pending_key: Option<(String, Position)>,
    /// A container used as a mapping key (`? [a, b]: x`): indexed under a placeholder name.
    is_key: bool,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    duplicate: Option<(KeyPath, Position)>,
}

impl Builder {
    fn expecting_key(&self) -> bool {
        self.stack
            .last()
            .is_some_and(|f| matches!(f.node.children, Children::Map(_)) && f.pending_key.is_none())
    }

    fn current_path(&self) -> KeyPath {
        let mut segs = Vec::new();
        for frame in &self.stack {
            match (&frame.node.children, &frame.pending_key) {
                (Children::Map(_), Some((key, _))) => segs.push(Seg::Key(key.clone())),
                (Children::Seq(items), _) => segs.push(Seg::Index(items.len())),
                _ => {}
            }
        }
        KeyPath(segs)
    }

    fn set_key(&mut self, key: String, pos: Position) {
        let duplicate = self
            .stack
            .last()
            .is_some_and(|frame| match &frame.node.children {
                Children::Map(entries) => entries.iter().any(|(k, _)| *k == key),
                _ => false,
            });
        if duplicate && self.duplicate.is_none() {
            self.duplicate = Some((self.current_path().key(key.clone()), pos));
        }
        if let Some(frame) = self.stack.last_mut() {
            frame.pending_key = Some((key, pos));
        }
    }

    fn attach(&mut self, mut node: Node) {
        let Some(frame) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        match &mut frame.node.children {
            Children::Map(entries) => {
                if let Some((key, pos)) = frame.pending_key.take() {
                    node.pos = pos;
                    entries.push((key, node));
                }
            }
            Children::Seq(items) => {
                // A container's start marker is imprecise; its first child's is not.
                let first = match &node.children {
                    Children::Map(entries) => entries.first().map(|(_, child)| child.pos),
                    Children::Seq(inner) => inner.first().map(|child| child.pos),
                    Children::Leaf => None,
                };
                if let Some(pos) = first {
                    node.pos = pos;
                }
                items.push(node);
            }
            Children::Leaf => {}
        }
    }

    fn open(&mut self, children: Children, mark: Marker) {
        let is_key = self.expecting_key();
        let node = Node {
            pos: Position::from_marker(mark),
            plain: false,
            children,
        };
        self.stack.push(Frame {
            node,
            pending_key: None,
            is_key,
        });
    }

    fn close(&mut self) {
        if let Some(frame) = self.stack.pop() {
            if frame.is_key {
                self.set_key("<complex key>".to_owned(), frame.node.pos);
            } else {
                self.attach(frame.node);
            }
        }
    }

    fn leaf(&mut self, text: String, plain: bool, mark: Marker) {
        let pos = Position::from_marker(mark);
        if self.expecting_key() {
            self.set_key(text, pos);
        } else {
            self.attach(Node {
                pos,
                plain,
                children: Children::Leaf,
            });
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, style, _, _) => self.leaf(text, style == TScalarStyle::Plain, mark),
            Event::Alias(_) => self.leaf("<alias>".to_owned(), true, mark),
            Event::MappingStart(..) => self.open(Children::Map(Vec::new()), mark),
            Event::SequenceStart(..) => self.open(Children::Seq(Vec::new()), mark),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEXT: &str = "\
server:
  port: 8080
providers:
  openai:
    type: openai
    api_key: \"quoted\"
circuitBreaker:
  maxRequests: 3
provider_preference:
  - ollama
  - openai
list: [a, b]
items:
  - name: x
    key: y
";

    fn pos(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn keys_and_items_have_one_based_positions() {
        let index = PositionIndex::build(TEXT);
        assert_eq!(index.get("server"), pos(1, 1));
        assert_eq!(index.get("server.port"), pos(2, 3));
        assert_eq!(index.get("providers.openai.api_key"), pos(6, 5));
        assert_eq!(index.get("provider_preference[1]"), pos(11, 5));
        assert_eq!(index.get("list[1]"), pos(12, 11));
        assert_eq!(index.get("items[0]"), pos(14, 5));
        assert_eq!(index.get("items[0].key"), pos(15, 5));
        assert_eq!(index.get("nope"), None);
    }

    #[test]
    fn canonical_paths_resolve_to_the_written_spelling() {
        let index = PositionIndex::build(TEXT);
        let resolved = index.resolve(&KeyPath::parse("circuit_breaker.max_requests"));
        assert_eq!(resolved.spelled.to_string(), "circuitBreaker.maxRequests");
        assert_eq!(resolved.pos, pos(8, 3));
        let resolved = index.resolve(&KeyPath::parse("providers.openai.base_url"));
        assert_eq!(resolved.spelled.to_string(), "providers.openai.base_url");
        assert_eq!(resolved.pos, pos(4, 3));
    }

    #[test]
    fn scalar_style_is_recorded() {
        let index = PositionIndex::build(TEXT);
        assert_eq!(
            index.is_plain_scalar(&KeyPath::parse("server.port")),
            Some(true)
        );
        assert_eq!(
            index.is_plain_scalar(&KeyPath::parse("providers.openai.api_key")),
            Some(false)
        );
    }

    #[test]
    fn duplicate_keys_are_found() {
        let index = PositionIndex::build("a:\n  b: 1\n  b: 2\n");
        let (path, at) = index.duplicate().cloned().unwrap();
        assert_eq!(path.to_string(), "a.b");
        assert_eq!(at, Position { line: 3, column: 3 });
    }

    #[test]
    fn paths_print_and_parse() {
        let path = KeyPath::root()
            .key("auth")
            .key("api_keys")
            .index(2)
            .key("key");
        assert_eq!(path.to_string(), "auth.api_keys[2].key");
        assert_eq!(KeyPath::parse("auth.api_keys[2].key"), path);
    }
}
