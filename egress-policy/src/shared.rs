//! A value shared by the layers that read it and swapped whole by whoever reloads it; a leaf,
//! so the engines' own stores (the JWKS cache) can use it beside the policy snapshot.

use arc_swap::ArcSwap;
use std::sync::Arc;

/// A value shared by the layers that read it and swapped whole by whoever reloads it: every
/// reader sees the old value or the new one, never a mix. Cloning shares the same value.
pub struct Shared<T>(Arc<ArcSwap<T>>);

impl<T> Shared<T> {
    /// A shared value.
    pub fn new(value: T) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(value)))
    }

    /// A shared value from one already in an `Arc`.
    pub fn from_arc(value: Arc<T>) -> Self {
        Self(Arc::new(ArcSwap::new(value)))
    }

    /// Replaces the value; readers that loaded the old one keep it until they drop it.
    pub fn store(&self, value: T) {
        self.0.store(Arc::new(value));
    }

    /// Replaces the value, handing back the one it replaces (so that the caller chooses
    /// where a large one is freed).
    pub fn swap(&self, value: T) -> Arc<T> {
        self.0.swap(Arc::new(value))
    }

    /// Replaces the value with one already shared.
    pub fn store_arc(&self, value: Arc<T>) {
        self.0.store(value);
    }

    /// The current value.
    #[inline]
    pub fn load(&self) -> Arc<T> {
        self.0.load_full()
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Default> Default for Shared<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Shared").field(&self.0.load()).finish()
    }
}
