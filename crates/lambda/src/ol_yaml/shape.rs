//! A cheap look at the shape of a YAML text before a real parser sees it,
//! so that hostile input is refused in microseconds: its size, how deep its
//! collections nest and how many aliases it uses.
//!
//! Why: libyaml (under serde_yaml_ng) scans the whole document before the
//! deserializer's recursion limit can stop it, and its scanner does work
//! per token proportional to the nesting depth, so deep nesting costs time
//! quadratic in the input (measured: 64 KiB of `{a: ` takes 0.6 s, 256 KiB
//! takes 12 s, and such text compresses to almost nothing in an upload).
//! Aliases can expand exponentially (an "alias bomb").
//!
//! The scan is a small tokenizer, not a YAML parser: it follows quoted
//! scalars (`"` with `\` escapes, `'` with `''`), comments, block scalars
//! (`|`, `>`), anchors, tags and aliases, counts flow collections (`[`,
//! `{`) exactly and block nesting generously (each indentation level counts
//! once per `-`, `?` and `key:` on its line, plus one), so that it never
//! counts less nesting than there is in the texts it is meant for. Should
//! some exotic text still get past it, the size cap bounds the parser's
//! work.

/// Largest text accepted, in bytes.
pub const MAX_BYTES: usize = 64 << 10;
/// Deepest nesting accepted, flow and block levels together, as counted
/// here (a real ol.yaml needs fewer than 10).
pub const MAX_DEPTH: usize = 32;
/// Most aliases (`*name`) accepted.
pub const MAX_ALIASES: usize = 32;

/// Why a text was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The text is too long.
    #[error("{size} bytes is over the limit of {MAX_BYTES} bytes")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
    },
    /// Collections nest too deeply.
    #[error(
        "line {line}: nesting is deeper than {MAX_DEPTH} levels (counting [ ], {{ }} and indentation)"
    )]
    TooDeep {
        /// 1-based line where the limit was passed.
        line: usize,
    },
    /// Too many aliases.
    #[error("line {line}: more than {MAX_ALIASES} aliases (*name)")]
    TooManyAliases {
        /// 1-based line of the alias past the limit.
        line: usize,
    },
}

/// Checks `text` against [`MAX_BYTES`], [`MAX_DEPTH`] and [`MAX_ALIASES`];
/// linear in its length.
pub fn check(text: &str) -> Result<(), ShapeError> {
    if text.len() > MAX_BYTES {
        return Err(ShapeError::TooLarge { size: text.len() });
    }
    let mut scan = Scan::default();
    for (i, line) in text.split('\n').enumerate() {
        scan.line = i + 1;
        scan.line(line.strip_suffix('\r').unwrap_or(line).as_bytes())?;
    }
    Ok(())
}

/// A block scalar (`|` or `>`) whose content lines are being skipped.
#[derive(Debug, Clone, Copy)]
struct BlockScalar {
    /// Content must be indented more than this.
    parent: isize,
    /// The content's indentation, from its first non-blank line.
    content: Option<usize>,
}

/// A block line enclosing the lines after it that are indented more.
#[derive(Debug, Clone, Copy)]
struct BlockLine {
    indent: usize,
    /// Levels of nesting it opens: one, plus one per `-`, `?` and `key:`.
    levels: usize,
    /// Column of the innermost collection on it (-1: none at all), which
    /// the nodes it holds on the lines below must be indented past.
    parent: isize,
}

#[derive(Debug, Default)]
struct Scan {
    line: usize,
    /// Open flow collections.
    flow: usize,
    /// Block lines enclosing the current one, and the current one.
    block: Vec<BlockLine>,
    /// Levels counted for the current block line (enclosing ones included).
    block_depth: usize,
    /// Inside a quoted scalar opened by this byte.
    quote: Option<u8>,
    block_scalar: Option<BlockScalar>,
    /// The next non-blank byte may start a node.
    node_start: bool,
    /// The last token was a quoted scalar or a closed flow collection, so a
    /// `:` right after it is a value indicator even without a space.
    json_key: bool,
    /// The previous block line ended inside a plain scalar, which a line
    /// indented past this column continues.
    plain_open: Option<isize>,
    /// The last token was a plain scalar.
    in_plain: bool,
    aliases: usize,
}

impl Scan {
    fn line(&mut self, line: &[u8]) -> Result<(), ShapeError> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let blank = line[indent..].iter().all(|&b| b == b' ' || b == b'\t');
        if let Some(scalar) = self.block_scalar {
            let content = match scalar.content {
                _ if blank => return Ok(()),
                Some(content) => content,
                None if as_col(indent) > scalar.parent => {
                    self.block_scalar = Some(BlockScalar {
                        content: Some(indent),
                        ..scalar
                    });
                    return Ok(());
                }
                None => usize::MAX,
            };
            if indent >= content {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if self.quote.is_some() || self.flow > 0 {
            // Inside a quoted scalar or a flow collection, indentation means
            // nothing: carry on where the last line stopped.
            return self.tokens(line, 0);
        }
        if blank || line[indent] == b'#' {
            return Ok(());
        }
        let marker = (line.starts_with(b"---") || line.starts_with(b"..."))
            && matches!(line.get(3), None | Some(b' ' | b'\t'));
        if marker {
            // A document marker: nothing encloses what follows.
            self.block.clear();
            self.plain_open = None;
            self.node_start = true;
            return self.tokens(line, 3);
        }
        let continues = self.plain_open.is_some_and(|col| as_col(indent) > col);
        self.plain_open = None;
        if continues {
            // More of a multi-line plain scalar: text, no structure.
            self.node_start = false;
            return self.tokens(line, indent);
        }
        while self.block.last().is_some_and(|l| l.indent >= indent) {
            self.block.pop();
        }
        let parent = self.block.last().map_or(-1, |l| l.parent);
        self.block.push(BlockLine {
            indent,
            levels: 1,
            parent,
        });
        self.node_start = true;
        self.block_depth = self.block.iter().map(|l| l.levels).sum();
        self.check_depth()?;
        self.tokens(line, indent)
    }

    /// One more level of nesting on the current block line, a collection
    /// at column `col`.
    fn block_level(&mut self, col: usize) -> Result<(), ShapeError> {
        if let Some(last) = self.block.last_mut() {
            last.levels += 1;
            last.parent = as_col(col);
        }
        self.block_depth += 1;
        self.check_depth()
    }

    /// Column of the innermost collection on the current block line.
    fn parent(&self) -> isize {
        self.block.last().map_or(-1, |l| l.parent)
    }

    fn check_depth(&self) -> Result<(), ShapeError> {
        if self.block_depth + self.flow > MAX_DEPTH {
            return Err(ShapeError::TooDeep { line: self.line });
        }
        Ok(())
    }

    /// Scans `line` from byte `from`.
    fn tokens(&mut self, line: &[u8], from: usize) -> Result<(), ShapeError> {
        let in_block = self.flow == 0;
        // Where the last plain scalar started: a key, if `: ` follows.
        let mut plain_col = from;
        let mut i = from;
        while i < line.len() {
            let b = line[i];
            let next = line.get(i + 1).copied();
            let spaced = |n: Option<u8>| matches!(n, None | Some(b' ' | b'\t'));
            if let Some(q) = self.quote {
                match (q, b) {
                    (b'"', b'\\') => i += 1,
                    (b'\'', b'\'') if next == Some(b'\'') => i += 1,
                    _ if b == q => {
                        self.quote = None;
                        self.json_key = true;
                    }
                    _ => {}
                }
                i += 1;
                continue;
            }
            if b == b' ' || b == b'\t' {
                i += 1;
                continue;
            }
            if b == b'#' && (i == 0 || matches!(line[i - 1], b' ' | b'\t')) {
                break;
            }
            let json_key = std::mem::take(&mut self.json_key);
            let in_flow = self.flow > 0;
            let was_plain = std::mem::take(&mut self.in_plain);
            match b {
                b'[' | b'{' if self.node_start || in_flow => {
                    self.flow += 1;
                    self.check_depth()?;
                    self.node_start = true;
                }
                b']' | b'}' if in_flow => {
                    self.flow -= 1;
                    self.node_start = false;
                    self.json_key = true;
                }
                b',' if in_flow => self.node_start = true,
                b'"' | b'\'' if self.node_start => {
                    self.quote = Some(b);
                    self.node_start = false;
                    plain_col = i;
                }
                b'-' | b'?' if self.node_start && spaced(next) => {
                    if !in_flow {
                        self.block_level(i)?;
                    }
                }
                b':' if spaced(next)
                    || json_key
                    || (in_flow && matches!(next, Some(b',' | b'[' | b']' | b'{' | b'}'))) =>
                {
                    if !in_flow {
                        // A key: its mapping is where the key started.
                        self.block_level(if was_plain || json_key { plain_col } else { i })?;
                    }
                    self.node_start = true;
                }
                b'&' | b'!' if self.node_start => {
                    // An anchor or tag: a node still follows it.
                    i = token_end(line, i, in_flow);
                    continue;
                }
                b'*' if self.node_start => {
                    self.aliases += 1;
                    if self.aliases > MAX_ALIASES {
                        return Err(ShapeError::TooManyAliases { line: self.line });
                    }
                    self.node_start = false;
                    i = token_end(line, i, in_flow);
                    continue;
                }
                b'|' | b'>' if self.node_start && !in_flow => {
                    self.block_scalar = Some(BlockScalar {
                        parent: self.parent(),
                        content: None,
                    });
                    return Ok(());
                }
                _ if self.node_start => {
                    self.node_start = false;
                    self.in_plain = true;
                    plain_col = i;
                }
                _ => self.in_plain = was_plain,
            }
            i += 1;
        }
        if in_block && self.flow == 0 && self.quote.is_none() && self.in_plain {
            self.plain_open = Some(self.parent());
        }
        Ok(())
    }
}

/// A column, or -1 for "before any column".
fn as_col(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

/// The end of the token starting at `start` (an anchor, tag or alias).
fn token_end(line: &[u8], start: usize, in_flow: bool) -> usize {
    line[start..]
        .iter()
        .position(|&b| {
            matches!(b, b' ' | b'\t') || (in_flow && matches!(b, b',' | b'[' | b']' | b'{' | b'}'))
        })
        .map_or(line.len(), |n| start + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> bool {
        matches!(check(text), Err(ShapeError::TooDeep { .. }))
    }

    #[test]
    fn real_configs_pass() {
        for text in [
            "",
            "# only a comment\n",
            "triggers:\n  http: [{method: GET}, {method: POST}]\n  cron: [{schedule: \"*/5 * * * *\"}]\nenvironment: {GREETING: hello}\nlimits: {mem_mb: 32, runtime_sec: 5}\n",
            "triggers:\n  http:\n    - method: GET\n    - method: POST\n  cron:\n    - schedule: '0 * * * *'\nenvironment:\n  A: \"x: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"\n  B: 'it''s [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['\n  C: x[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n  # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
            "environment:\n  SCRIPT: |\n    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n        {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\n    \"unclosed\n  NEXT: >-\n    folded [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
            "base: &base {mem_mb: 32}\nlimits: *base\n",
            "environment:\n  LONG: \"first line [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n    second line\"\n",
        ] {
            assert_eq!(check(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn deep_flow_and_block_nesting_is_refused() {
        assert!(depth_error(&"[".repeat(40)));
        assert!(depth_error(&"{a: ".repeat(40)));
        assert!(depth_error(&"[{".repeat(20)));
        assert!(depth_error(&format!("{}x", "- ".repeat(40))));
        let block: String = (0..40).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        assert!(depth_error(&block));
        let seqs: String = (0..40)
            .map(|i| format!("{}-\n", " ".repeat(2 * i)))
            .collect();
        assert!(depth_error(&seqs));
        // Split over lines, after comments and quoted scalars.
        let lines: String = (0..40).map(|_| "[ # [\n\"]]]\",\n").collect();
        assert!(depth_error(&lines));
        // Block nesting and flow nesting add up.
        let mut mixed: String = (0..16).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        mixed.push_str(&format!("{}b: {}", " ".repeat(16), "[".repeat(20)));
        assert!(depth_error(&mixed));
        // Nesting past the limit hidden behind a block scalar's end.
        let after_scalar = format!("a: |\n  text\nb: {}", "[".repeat(40));
        assert!(depth_error(&after_scalar));
        // ... or behind a multi-line plain scalar.
        let after_plain = format!("a: b\n  \"c\nd: {}", "[".repeat(40));
        assert!(depth_error(&after_plain), "{:?}", check(&after_plain));
    }

    #[test]
    fn alias_bombs_and_huge_texts_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (n, prev) in ["b", "c", "d", "e", "f", "g", "h", "i", "j"]
            .iter()
            .zip(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
        {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            bomb.push_str(&format!("{n}: &{n} [{refs}]\n"));
        }
        assert!(matches!(
            check(&bomb),
            Err(ShapeError::TooManyAliases { line: 5 })
        ));
        let big = "#".repeat(MAX_BYTES + 1);
        assert_eq!(
            check(&big),
            Err(ShapeError::TooLarge {
                size: MAX_BYTES + 1
            })
        );
        assert_eq!(check(&"#".repeat(MAX_BYTES)), Ok(()));
    }
}
