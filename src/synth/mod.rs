//! Surface simulator. (Skeleton.)
