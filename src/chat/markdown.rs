//! Model text as a Markdown tree for the page to build DOM nodes from. Raw HTML in the text is
//! kept as literal text: nothing the model writes is ever interpreted as markup.

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

fn top(stack: &mut [(Block, Vec<Node>)]) -> &mut Vec<Node> {
    &mut stack.last_mut().expect("the root stays on the stack").1
}

pub fn parse(text: &str) -> Vec<Node> {
    let mut stack: Vec<(Block, Vec<Node>)> = vec![(Block::Other, Vec::new())];
    for event in Parser::new_ext(text, Options::ENABLE_STRIKETHROUGH) {
        match event {
            Event::Start(tag) => stack.push((block_of(tag), Vec::new())),
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

    #[test]
    fn html_in_model_text_stays_text() {
        let nodes = parse("hi <img src=x onerror=alert(1)> and\n\n<script>alert(2)</script>");
        let mut text = String::new();
        flatten(&nodes, &mut text);
        assert!(text.contains("<img src=x onerror=alert(1)>"), "{text}");
        assert!(text.contains("<script>"), "{text}");
    }

    #[test]
    fn unfinished_code_block_still_renders() {
        let nodes = parse("```rust\nfn main() {");
        assert!(matches!(&nodes[0], Node::Element(Block::CodeBlock(Some(lang)), _) if lang == "rust"));
    }
}
