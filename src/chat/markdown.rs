//! Model text as a Markdown tree for the page to build DOM nodes from. Raw HTML in the text is
//! kept as literal text: nothing the model writes is ever interpreted as markup. The tree is at
//! most [`MAX_DEPTH`] elements deep, so walking it (to render, or to drop it) cannot overflow the
//! stack whatever the model writes.

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag};

/// A parsed Markdown element with its children.
pub enum Node {
    Text(String),
    Code(String),
    Break,
    Rule,
    Element(Block, Vec<Node>),
}

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

pub fn parse(text: &str) -> Vec<Node> {
    // The root, then one entry per open element.
    let mut stack: Vec<(Block, Vec<Node>)> = vec![(Block::Other, Vec::new())];
    // Elements opened beyond MAX_DEPTH and not closed yet: their ends close nothing.
    let mut flattened = 0usize;
    for event in Parser::new_ext(text, Options::ENABLE_STRIKETHROUGH) {
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
