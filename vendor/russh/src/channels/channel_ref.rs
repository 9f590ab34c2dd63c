use tokio::sync::mpsc::Sender;

use super::{EarlyData, WindowSizeRef};
use crate::ChannelMsg;

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    /// Sent by the session on the open confirmation (client only).
    pub(crate) early_data: Option<EarlyData>,
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self {
            sender,
            window_size: WindowSizeRef::new(0),
            early_data: None,
        }
    }

    /// A channel being opened with data to send on its confirmation.
    pub(crate) fn with_early_data(sender: Sender<ChannelMsg>, early_data: EarlyData) -> Self {
        Self {
            early_data: Some(early_data),
            ..Self::new(sender)
        }
    }

    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}
