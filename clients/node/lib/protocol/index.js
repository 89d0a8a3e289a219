// The byte-level protocol of collabedit.v1, as collabedit_secure/protocol defines it.
export * from './encoding.js';
export * from './ring.js';
export * from './fixedpoint.js';
export * from './seeds.js';
export * from './keys.js';
export * from './shamir.js';
export * from './sharebox.js';
export * from './recovery.js';
export * from './masking.js';
export * from './chunking.js';
