//! One file per page (or pair of pages: a list and its detail). Each renders from the same
//! library calls the API uses; pages with live parts name them in [`live_view`].

pub mod aggregate;
pub mod audit;
pub mod dead_letters;
pub mod events;
pub mod groups;
pub mod jobs;
pub mod journey;
pub mod overview;
pub mod relay;
pub mod schemas;

use std::collections::HashMap;

use futures_util::future::BoxFuture;

use super::live::LiveView;
use super::{Failure, UiState, Viewer};

/// Renders a page's live fragments: `(element id, html)` pairs.
pub type Fragments = for<'a> fn(&'a UiState, &'a Viewer) -> BoxFuture<'a, Vec<(String, String)>>;

/// What `/ui/live?view=<view>` streams for the page `view`.
pub fn live_view(
    view: &str,
    params: &HashMap<String, String>,
    viewer: &Viewer,
) -> Result<LiveView, Failure> {
    Ok(match view {
        "overview" => LiveView::Fragments(overview::fragments),
        "relay" => LiveView::Fragments(relay::fragments),
        "groups" => LiveView::Fragments(groups::fragments),
        "events" => LiveView::Tail(Box::new(events::TailFilter::from_params(params, viewer)?)),
        _ => LiveView::Nothing,
    })
}
