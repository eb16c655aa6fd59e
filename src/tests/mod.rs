//! Tests that span many modules: property tests of every parser at the driver's edges
//! (`hostile`). Tests of one module live in that module.

mod hostile;
