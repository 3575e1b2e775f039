//! Model text as a Markdown tree for the page to build DOM nodes from. Raw HTML in the text is
//! kept as literal text: nothing the model writes is ever interpreted as markup. The tree is at
//! most [`MAX_DEPTH`] elements deep, so walking it (to render, or to drop it) cannot overflow the
//! stack whatever the model writes.

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag};

/// A parsed Markdown element with its children.
#[derive(Debug, PartialEq)]
pub enum Node {
    Text(String),
    Code(String),
    Break,
    Rule,
    Element(Block, Vec<Node>),
}

#[derive(Debug, PartialEq)]
pub enum Block {
    Paragraph,
    Heading(HeadingLevel),
    Quote,
    CodeBlock(Option<String>),
    List(Option<u64>),
    Item,
    Emphasis,
    Strong,
    Strikethrough,
    /// Links keep their text but are not followed: the model's URLs are not trusted.
    Link(String),
    Other,
}

fn block_of(tag: Tag) -> Block {
    match tag {
        Tag::Paragraph => Block::Paragraph,
        Tag::Heading { level, .. } => Block::Heading(level),
        Tag::BlockQuote(_) => Block::Quote,
        Tag::CodeBlock(CodeBlockKind::Fenced(lang)) if !lang.is_empty() => Block::CodeBlock(Some(lang.to_string())),
        Tag::CodeBlock(_) => Block::CodeBlock(None),
        Tag::List(start) => Block::List(start),
        Tag::Item => Block::Item,
        Tag::Emphasis => Block::Emphasis,
        Tag::Strong => Block::Strong,
        Tag::Strikethrough => Block::Strikethrough,
        Tag::Link { dest_url, .. } => Block::Link(dest_url.to_string()),
        _ => Block::Other,
    }
}

/// Elements nested deeper than this (a reply of thousands of `>` or list markers) are flattened:
/// their text goes into the deepest element kept.
pub const MAX_DEPTH: usize = 16;

fn top(stack: &mut [(Block, Vec<Node>)]) -> &mut Vec<Node> {
    &mut stack.last_mut().expect("the root stays on the stack").1
}

const OPTIONS: Options = Options::ENABLE_STRIKETHROUGH;

/// `text` cut into its top-level blocks but the last, and that last one (possibly empty), each
/// with its text: what a streaming reply renders. More text extends or splits only the last
/// block, so the others keep their DOM nodes (and the reader's selection) while a reply streams.
/// Each piece parses as it does within the whole text (tested over every prefix of a corpus).
pub fn settled_blocks(text: &str) -> (Vec<&str>, &str) {
    let mut starts = Vec::new();
    let mut depth = 0usize;
    for (event, range) in Parser::new_ext(text, OPTIONS).into_offset_iter() {
        match event {
            Event::Start(_) => {
                if depth == 0 {
                    starts.push(range.start);
                }
                depth += 1;
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Rule if depth == 0 => starts.push(range.start),
            _ => {}
        }
    }
    let Some(&last) = starts.last() else { return (Vec::new(), text) };
    // Text before the first block (blank lines, link definitions) stays with it.
    starts[0] = 0;
    let settled = starts.windows(2).map(|pair| &text[pair[0]..pair[1]]).collect();
    (settled, &text[last..])
}

pub fn parse(text: &str) -> Vec<Node> {
    // The root, then one entry per open element.
    let mut stack: Vec<(Block, Vec<Node>)> = vec![(Block::Other, Vec::new())];
    // Elements opened beyond MAX_DEPTH and not closed yet: their ends close nothing.
    let mut flattened = 0usize;
    for event in Parser::new_ext(text, OPTIONS) {
        match event {
            Event::Start(_) if stack.len() > MAX_DEPTH => flattened += 1,
            Event::Start(tag) => stack.push((block_of(tag), Vec::new())),
            Event::End(_) if flattened > 0 => flattened -= 1,
            Event::End(_) if stack.len() > 1 => {
                let (block, children) = stack.pop().expect("checked");
                top(&mut stack).push(Node::Element(block, children));
            }
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => top(&mut stack).push(Node::Text(t.to_string())),
            Event::Code(t) => top(&mut stack).push(Node::Code(t.to_string())),
            Event::SoftBreak => top(&mut stack).push(Node::Text("\n".into())),
            Event::HardBreak => top(&mut stack).push(Node::Break),
            Event::Rule => top(&mut stack).push(Node::Rule),
            _ => {}
        }
    }
    // A reply cut off mid-element (still streaming) leaves open blocks: close them.
    while stack.len() > 1 {
        let (block, children) = stack.pop().expect("checked");
        top(&mut stack).push(Node::Element(block, children));
    }
    stack.pop().map(|(_, nodes)| nodes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(nodes: &[Node], out: &mut String) {
        for node in nodes {
            match node {
                Node::Text(t) | Node::Code(t) => out.push_str(t),
                Node::Element(_, children) => flatten(children, out),
                _ => {}
            }
        }
    }

    /// Every string the tree carries: text, code and link targets (what could reach the DOM).
    fn strings(nodes: &[Node], out: &mut Vec<String>) {
        for node in nodes {
            match node {
                Node::Text(t) | Node::Code(t) => out.push(t.clone()),
                Node::Element(block, children) => {
                    if let Block::Link(url) = block {
                        out.push(url.clone());
                    }
                    strings(children, out);
                }
                _ => {}
            }
        }
    }

    /// Elements on the longest path from the root, counted without recursion (an unbounded tree
    /// must fail the test, not overflow the stack).
    fn depth(nodes: &[Node]) -> usize {
        let mut deepest = 0;
        let mut pending: Vec<(&Node, usize)> = nodes.iter().map(|n| (n, 1)).collect();
        while let Some((node, level)) = pending.pop() {
            if let Node::Element(_, children) = node {
                deepest = deepest.max(level);
                pending.extend(children.iter().map(|c| (c, level + 1)));
            }
        }
        deepest
    }

    #[test]
    fn html_in_model_text_stays_text() {
        let nodes = parse("hi <img src=x onerror=alert(1)> and\n\n<script>alert(2)</script>");
        let mut text = String::new();
        flatten(&nodes, &mut text);
        assert!(text.contains("<img src=x onerror=alert(1)>"), "{text}");
        assert!(text.contains("<script>"), "{text}");
    }

    #[test]
    fn links_images_and_raw_html_from_the_model_become_nothing_followable() {
        let reply = "[x](javascript:alert(1)) <a href=\"javascript:alert(2)\">y</a> ![alt](http://evil/pixel.png)\n\n\
                     <iframe src=\"http://evil/\"></iframe>";
        let nodes = parse(reply);
        let mut all = Vec::new();
        strings(&nodes, &mut all);
        // The Markdown link is kept as a link (rendered as text with its URL as a title, never an href).
        let Node::Element(Block::Paragraph, paragraph) = &nodes[0] else { panic!("a paragraph first") };
        assert!(matches!(&paragraph[0], Node::Element(Block::Link(url), text)
            if url == "javascript:alert(1)" && matches!(&text[..], [Node::Text(t)] if t == "x")));
        // Raw HTML is literal text, tags and all.
        assert!(all.iter().any(|s| s.contains("<a href=\"javascript:alert(2)\">")), "{all:?}");
        assert!(all.iter().any(|s| s.contains("<iframe src=\"http://evil/\">")), "{all:?}");
        // An image keeps only its alt text: its URL is nowhere in the tree, so nothing can load it.
        assert!(all.iter().any(|s| s == "alt"), "{all:?}");
        assert!(!all.iter().any(|s| s.contains("pixel.png")), "{all:?}");
    }

    const STREAMED: [&str; 6] = [
        "# Title\n\nA paragraph with *emphasis* and `code`.\n\n- one\n- two\n\n  still two\n- three\n\n> a quote\n> goes on\n\nEnd.",
        "Setext heading\n===\n\nthen text\n---\n\n***\n\n1. first\n2. second\n\n    indented code\n\nlast",
        "```rust\nfn main() {\n\n    println!(\"hi\");\n}\n```\n\nafter the fence\n\n~~struck~~ [link](http://x) <b>html</b>",
        "<div>\nraw html block\n</div>\n\ntext [ref]\n\n[ref]: http://example.com\n\n| a | b |\n|---|---|\n| 1 | 2 |",
        "lazy\ncontinuation\n> quote\nlazy line\n\n- item\nlazy item\n\n\n\nfar below",
        "東京 🤖 first\n\n* star list\n+ plus list\n\n2) paren list\n3) next\n\n\tTabbed code\n\nend",
    ];

    /// Every prefix of each reply, as it streams: the settled blocks and the last one parse as the
    /// whole does, so rendering them apart shows the same reply.
    #[test]
    fn a_streaming_reply_cut_into_blocks_parses_as_the_whole() {
        for reply in STREAMED {
            for end in (0..=reply.len()).filter(|&end| reply.is_char_boundary(end)) {
                let text = &reply[..end];
                let (settled, last) = settled_blocks(text);
                assert_eq!(settled.concat() + last, text, "the pieces are the text");
                let pieces: Vec<Node> = settled.iter().chain([&last]).flat_map(|piece| parse(piece)).collect();
                assert_eq!(pieces, parse(text), "{text:?} in pieces {settled:?} + {last:?}");
            }
        }
    }

    /// As a reply grows, a settled block stays settled with the same text: its DOM nodes are kept.
    #[test]
    fn a_settled_block_stays_settled_as_the_reply_grows() {
        for reply in STREAMED {
            let mut before: Vec<&str> = Vec::new();
            let mut rebuilt = 0;
            for end in (0..=reply.len()).filter(|&end| reply.is_char_boundary(end)) {
                let (settled, _) = settled_blocks(&reply[..end]);
                let kept = before.iter().zip(&settled).take_while(|(a, b)| a == b).count();
                rebuilt += before.len() - kept;
                before = settled;
            }
            // A block is taken back only where Markdown itself changes an earlier block (a
            // setext underline, a link definition), never as a rule.
            assert!(rebuilt <= 2, "{reply:?}: {rebuilt} settled blocks rebuilt");
            assert!(before.len() >= 2, "{reply:?} has blocks to keep: {before:?}");
        }
    }

    #[test]
    fn unfinished_code_block_still_renders() {
        let nodes = parse("```rust\nfn main() {");
        assert!(matches!(&nodes[0], Node::Element(Block::CodeBlock(Some(lang)), _) if lang == "rust"));
    }

    #[test]
    fn deep_nesting_is_flattened_and_keeps_the_text() {
        const LEVELS: usize = 100_000;
        let replies = [
            format!("{} deep", ">".repeat(LEVELS)),
            format!("{}deep", "- ".repeat(LEVELS)),
            format!("{}deep", "1. ".repeat(LEVELS)),
            format!("{}deep{}", "*".repeat(LEVELS), "*".repeat(LEVELS)),
            format!("{}deep", "> - ".repeat(LEVELS / 2)),
        ];
        for reply in replies {
            let nodes = parse(&reply);
            assert!(depth(&nodes) <= MAX_DEPTH, "{}…: {} levels", &reply[..8], depth(&nodes));
            let mut text = String::new();
            flatten(&nodes, &mut text);
            assert!(text.contains("deep"), "{}…: the text is kept", &reply[..8]);
        }
    }

    #[test]
    fn nesting_up_to_the_limit_is_kept() {
        let nodes = parse(&format!("{} kept", ">".repeat(MAX_DEPTH - 1)));
        // MAX_DEPTH - 1 quotes and the paragraph inside the last one.
        assert_eq!(depth(&nodes), MAX_DEPTH);
    }
}
