//! `setters!`: the `with_*` builder methods of a configuration struct whose
//! fields are public but which is `#[non_exhaustive]` (so other crates
//! cannot write it as a struct literal, and a field can be added in a minor
//! release). One method per field, each taking the field's own type.

/// `setters!(Type { with_field => field: FieldType, … })` writes, for each
/// entry, `pub fn with_field(self, field: FieldType) -> Self`, documented
/// with a link to the field. Attributes before an entry (`#[cfg(…)]`) go
/// on its method.
macro_rules! setters {
    ($ty:ident { $( $(#[$attr:meta])* $with:ident => $field:ident: $field_ty:ty ),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!(
                    "Sets [`", stringify!($field), "`](Self::", stringify!($field),
                    "), builder style: `", stringify!($ty), "::default().",
                    stringify!($with), "(…)`. The field can also be assigned."
                )]
                $(#[$attr])*
                #[must_use]
                pub fn $with(mut self, $field: $field_ty) -> Self {
                    self.$field = $field;
                    self
                }
            )*
        }
    };
}

pub(crate) use setters;
