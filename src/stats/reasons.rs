//! [`reasons!`]: a reason enum and its counts struct, from one list.

/// Declares a reason enum and the struct of its counts from one list of
/// `/// doc` `Variant => field,` entries, so that a reason is written once:
///
/// - the enum, with the attributes given and one documented variant an
///   entry, in the list's order; its private `COUNT` and `index()` (the
///   variant's place in the list: its counter in an array of `COUNT`);
/// - the counts struct, with the attributes given and one documented
///   `pub field: u64` an entry, in the same order; `total()` (its doc given
///   in the struct's braces); `iter()`, the `(field name, count)` pairs, the
///   labels the `metrics` feature publishes; and the private
///   `load(&[AtomicU64; COUNT])`, by index.
///
/// `in Stats::field` names the [`Stats`](super::Stats) field holding the
/// counts, for `iter()`'s example.
macro_rules! reasons {
    (
        $(#[$enum_attr:meta])*
        pub enum $Reason:ident {
            $(
                $(#[doc = $doc:literal])*
                $Variant:ident => $field:ident,
            )+
        }

        $(#[$counts_attr:meta])*
        pub struct $Counts:ident in Stats::$stats:ident {
            $(#[doc = $total_doc:literal])*
            pub fn total;
        }
    ) => {
        $(#[$enum_attr])*
        pub enum $Reason {
            $(
                $(#[doc = $doc])*
                $Variant,
            )+
        }

        impl $Reason {
            /// How many reasons there are.
            const COUNT: usize = [$(Self::$Variant),+].len();

            /// This reason's counter in an array of `COUNT`.
            fn index(self) -> usize {
                self as usize
            }
        }

        $(#[$counts_attr])*
        pub struct $Counts {
            $(
                #[doc = concat!(
                    stringify!($Counts), " for [`", stringify!($Reason), "::",
                    stringify!($Variant), "`]."
                )]
                pub $field: u64,
            )+
        }

        impl $Counts {
            $(#[doc = $total_doc])*
            pub fn total(&self) -> u64 {
                0 $(+ self.$field)+
            }

            /// Each count with its label (the field's name), in the order of
            /// the fields: one series per reason for a metrics exporter. The
            /// `metrics` feature publishes them with these labels, as
            #[doc = concat!("`pool_manager_", stringify!($stats), "_total{reason=\"…\"}`.")]
            ///
            /// ```
            /// use pool_manager::{Config, Conn, Manager};
            ///
            /// let manager = Manager::new(Config::default(), |conn: &mut Conn<'_>, data: &[u8]| {
            ///     std::io::Write::write_all(conn, data)
            /// })?;
            #[doc = concat!("let counts = manager.stats().", stringify!($stats), ";")]
            /// // One line per reason, as an exporter would write them.
            /// let lines: Vec<String> = counts
            ///     .iter()
            #[doc = concat!(
                "    .map(|(reason, n)| format!(\"pool_manager_", stringify!($stats),
                "_total{{reason={reason:?}}} {n}\"))"
            )]
            ///     .collect();
            /// assert_eq!(lines.len(), counts.iter().len());
            /// assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), counts.total());
            /// # Ok::<(), pool_manager::ConfigError>(())
            /// ```
            pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'static str, u64)> + use<> {
                [$((stringify!($field), self.$field)),+].into_iter()
            }

            /// The counts in `counters`, each at its reason's index.
            fn load(counters: &[::std::sync::atomic::AtomicU64; $Reason::COUNT]) -> Self {
                let [$($field),+] = counters
                    .each_ref()
                    .map(|c| c.load(::std::sync::atomic::Ordering::Relaxed));
                $Counts { $($field),+ }
            }
        }
    };
}

pub(super) use reasons;
