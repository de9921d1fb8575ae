//! Pages of list calls: `corvus.common.v1.PageRequest` in, `PageResponse` out. A token is
//! the position of the last item returned, opaque to clients.

use std::fmt::Display;
use std::str::FromStr;

use corvus_proto::common::v1::{PageRequest, PageResponse};
use tonic::Status;

use crate::error::invalid_argument;

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

/// The page size asked for, defaulted and capped, and the position to continue after.
pub fn page<T: FromStr>(req: Option<&PageRequest>) -> Result<(u32, Option<T>), Status> {
    let size = match req.map_or(0, |p| p.page_size) {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let token = req.map_or("", |p| p.page_token.as_str());
    let after = if token.is_empty() {
        None
    } else {
        Some(
            token
                .parse::<T>()
                .map_err(|_| invalid_argument("page.page_token", "not a token this server issued"))?,
        )
    };
    Ok((size, after))
}

/// The token of the next page: the last position, when the page was full.
pub fn next_page<T: Display>(returned: usize, size: u32, last: Option<T>) -> Option<PageResponse> {
    Some(PageResponse {
        next_page_token: match last {
            Some(last) if returned == size as usize => last.to_string(),
            _ => String::new(),
        },
    })
}
