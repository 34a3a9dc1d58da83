//! PATCHED (see vendor/README.md): a few values read or written last on a thread, each with
//! what it became, the oldest replaced first. A connection between two sidecars carries the
//! same few `:path` and `:authority` values on every request; the server keeps what each
//! parsed to (`server.rs`), the client the string each was copied into
//! (`frame/headers.rs`). The same bytes again get a clone. The kept values are copies, so no
//! frame's buffer is held; a value over `LONGEST` bytes is not kept.

use bytes::Bytes;

/// How many values are kept.
const KEPT: usize = 4;
/// The longest value kept.
const LONGEST: usize = 256;

pub(crate) struct Kept<T> {
    values: Vec<(Bytes, T)>,
    next: usize,
}

impl<T: Clone> Kept<T> {
    pub(crate) const fn new() -> Self {
        Kept {
            values: Vec::new(),
            next: 0,
        }
    }

    /// What `text` becomes by `make` (from a copy of it), kept or made now. An error is never
    /// kept.
    pub(crate) fn get<E>(
        &mut self,
        text: &[u8],
        make: impl FnOnce(Bytes) -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some((_, value)) = self
            .values
            .iter()
            .find(|(kept, _)| kept.len() == text.len() && kept[..] == *text)
        {
            return Ok(value.clone());
        }
        let own = Bytes::copy_from_slice(text);
        let value = make(own.clone())?;
        if text.len() <= LONGEST {
            if self.values.len() < KEPT {
                self.values.push((own, value.clone()));
            } else {
                self.values[self.next] = (own, value.clone());
                self.next = (self.next + 1) % KEPT;
            }
        }
        Ok(value)
    }
}
