//! Model text rendered from its Markdown tree ([`crate::chat::markdown`]) as DOM nodes: the text
//! only ever becomes text nodes, so markup the model writes (`<script>`, `<img onerror=…>`) is
//! shown, never interpreted.

use leptos::prelude::*;
use pulldown_cmark::HeadingLevel;

use crate::chat::markdown::{parse, settled_blocks, Block, Node};

/// Recurses once per level: the tree is at most [`crate::chat::markdown::MAX_DEPTH`] deep, however
/// deeply the model nests its Markdown.
fn render(node: Node) -> AnyView {
    match node {
        Node::Text(text) => text.into_any(),
        Node::Code(code) => view! { <code>{code}</code> }.into_any(),
        Node::Break => view! { <br /> }.into_any(),
        Node::Rule => view! { <hr /> }.into_any(),
        Node::Element(block, children) => {
            let children: Vec<AnyView> = children.into_iter().map(render).collect();
            match block {
                Block::Paragraph => view! { <p>{children}</p> }.into_any(),
                Block::Heading(HeadingLevel::H1) => view! { <h3>{children}</h3> }.into_any(),
                Block::Heading(HeadingLevel::H2) => view! { <h4>{children}</h4> }.into_any(),
                Block::Heading(_) => view! { <h5>{children}</h5> }.into_any(),
                Block::Quote => view! { <blockquote>{children}</blockquote> }.into_any(),
                Block::CodeBlock(language) => {
                    view! { <pre data-language=language><code>{children}</code></pre> }.into_any()
                }
                Block::List(Some(start)) => view! { <ol start=start>{children}</ol> }.into_any(),
                Block::List(None) => view! { <ul>{children}</ul> }.into_any(),
                Block::Item => view! { <li>{children}</li> }.into_any(),
                Block::Emphasis => view! { <em>{children}</em> }.into_any(),
                Block::Strong => view! { <strong>{children}</strong> }.into_any(),
                Block::Strikethrough => view! { <del>{children}</del> }.into_any(),
                Block::Link(url) => view! { <span class="link" title=url>{children}</span> }.into_any(),
                Block::Other => children.into_any(),
            }
        }
    }
}

/// `text` rendered as Markdown.
fn markdown(text: &str) -> AnyView {
    parse(text).into_iter().map(render).collect::<Vec<_>>().into_any()
}

/// Model text rendered as Markdown while it streams: each top-level block that later text can
/// no longer change is built once, keyed by its place and text, and kept (with the reader's
/// selection in it); only the last block is rebuilt as tokens arrive.
#[component]
pub fn StreamedMarkdown(text: RwSignal<String>) -> impl IntoView {
    let settled = Memo::new(move |_| {
        text.with(|text| {
            let (blocks, _) = settled_blocks(text);
            let mut start = 0;
            blocks
                .into_iter()
                .map(|block| {
                    start += block.len();
                    (start - block.len(), block.to_string())
                })
                .collect::<Vec<_>>()
        })
    });
    let last = move || text.with(|text| markdown(settled_blocks(text).1));
    view! {
        <For each=move || settled.get() key=|block| block.clone() let:block>
            {markdown(&block.1)}
        </For>
        {last}
    }
}
