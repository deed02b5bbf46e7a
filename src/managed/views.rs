//! Typed views of a managed buffer: `&[T]` for plain-old-data `T` (through bytemuck), and
//! with the `ndarray` feature an `ndarray` view (Task::MemManager's PDL view, in Rust).

use core::any::type_name;
use core::fmt;

use super::ManagedBuffer;
use crate::Layer;

/// Why a buffer cannot be viewed as elements of a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// The type's size is not the buffer's element size.
    ElementSize {
        /// The type asked for.
        type_name: &'static str,
        /// Its size.
        type_size: usize,
        /// The buffer's element size.
        element_size: usize,
    },
    /// The buffer's address is not aligned for the type.
    Misaligned {
        /// The type asked for.
        type_name: &'static str,
        /// Its alignment.
        align: usize,
        /// The buffer's address.
        address: usize,
    },
    /// A writable view needs the only handle; this many share the buffer.
    Shared {
        /// The handles sharing the buffer.
        handles: usize,
    },
    /// The shape asked for does not hold the buffer's elements exactly.
    Shape {
        /// The shape asked for.
        shape: Vec<usize>,
        /// The buffer's element count.
        count: usize,
    },
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViewError::ElementSize {
                type_name,
                type_size,
                element_size,
            } => write!(
                f,
                "cannot view elements of {element_size} bytes as {type_name} ({type_size} bytes)"
            ),
            ViewError::Misaligned {
                type_name,
                align,
                address,
            } => write!(
                f,
                "cannot view the buffer at {address:#x} as {type_name}: it needs alignment {align}"
            ),
            ViewError::Shared { handles } => write!(
                f,
                "a writable view needs the only handle to the buffer; {handles} share it"
            ),
            ViewError::Shape { shape, count } => {
                write!(
                    f,
                    "shape {shape:?} does not hold the buffer's {count} elements"
                )
            }
        }
    }
}

impl std::error::Error for ViewError {}

/// Checks that `T` is the buffer's element type in size and alignment. (A zero-size `T`
/// has no elements to view: it is refused as a size mismatch, whatever the element size.)
fn check<T, L: Layer>(buffer: &ManagedBuffer<L>) -> Result<(), ViewError> {
    let info = buffer.info();
    if size_of::<T>() != info.element_size || size_of::<T>() == 0 {
        return Err(ViewError::ElementSize {
            type_name: type_name::<T>(),
            type_size: size_of::<T>(),
            element_size: info.element_size,
        });
    }
    if !info.address.is_multiple_of(align_of::<T>()) {
        return Err(ViewError::Misaligned {
            type_name: type_name::<T>(),
            align: align_of::<T>(),
            address: info.address,
        });
    }
    Ok(())
}

impl<L: Layer> ManagedBuffer<L> {
    /// The elements as `&[T]`, for a plain-old-data `T` whose size is the buffer's element
    /// size and whose alignment the buffer's address meets.
    ///
    /// # Errors
    ///
    /// [`ViewError::ElementSize`] or [`ViewError::Misaligned`] naming the type.
    pub fn view<T: bytemuck::Pod>(&self) -> Result<&[T], ViewError> {
        check::<T, L>(self)?;
        Ok(bytemuck::cast_slice(self.as_bytes()))
    }

    /// The elements as `&mut [T]`, as [`view`](Self::view), when this is the only handle.
    ///
    /// # Errors
    ///
    /// As [`view`](Self::view), and [`ViewError::Shared`] when other handles exist.
    pub fn view_mut<T: bytemuck::Pod>(&mut self) -> Result<&mut [T], ViewError> {
        check::<T, L>(self)?;
        let handles = self.handles();
        let bytes = self.get_mut().ok_or(ViewError::Shared { handles })?;
        Ok(bytemuck::cast_slice_mut(bytes))
    }

    /// The elements as an `ndarray` view of `shape` (Task::MemManager's PDL view), for a
    /// plain-old-data `T` as in [`view`](Self::view).
    ///
    /// # Errors
    ///
    /// As [`view`](Self::view), and [`ViewError::Shape`] when the shape's elements are not
    /// the buffer's count.
    #[cfg(feature = "ndarray")]
    pub fn array<T, Sh>(&self, shape: Sh) -> Result<ndarray::ArrayView<'_, T, Sh::Dim>, ViewError>
    where
        T: bytemuck::Pod,
        Sh: ndarray::ShapeBuilder,
    {
        use ndarray::Dimension;
        let elements = self.view::<T>()?;
        let shape = shape.into_shape_with_order();
        let dims = shape.raw_dim().clone();
        let error = ViewError::Shape {
            shape: dims.slice().to_vec(),
            count: elements.len(),
        };
        if dims.size_checked() != Some(elements.len()) {
            return Err(error);
        }
        ndarray::ArrayView::from_shape(shape, elements).map_err(|_| error)
    }
}
