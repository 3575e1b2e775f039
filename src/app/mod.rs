//! The chat page (Leptos, client-side rendered). The state lives in [`AppState`], a bundle of
//! signals shared through context; the components in [`loading`] and [`chat`] read and change it.
//! Loading and generation run as local tasks that await the GPU, so the page stays responsive.

pub mod chat;
pub mod loading;
pub mod markdown;
mod page;

pub use page::*;
