//! The chat page (Leptos, client-side rendered). The state lives in [`AppState`], a bundle of
//! signals shared through context; the components in [`loading`], [`chat`] and [`conversations`]
//! read and change it. The model runs in the package's worker ([`engine`]): this thread only
//! renders, so a load or a reply never makes the page stutter. Conversations are kept in
//! IndexedDB ([`store`]).

pub mod chat;
pub mod conversations;
pub mod engine;
pub mod loading;
pub mod markdown;
mod page;
mod state;
pub mod store;

pub use page::App;
pub use state::*;
