-- purpose: Cohort overview per feature set: patients, slides and tiles with embeddings, and slide statuses.
-- grain: one row per (tiling, encoder) that has embeddings
-- params: none
-- columns: tiling, encoder, dim, n_patients, n_slides, n_tiles, tiles_per_slide_mean, tiles_per_slide_min,
--          tiles_per_slide_max, n_slides_in_store, n_slides_ok, n_slides_failed, n_slides_no_tissue,
--          n_slides_too_small
-- Reads only Parquet footers for the embeddings (embedding_files), so it is fast on any store size.
with files as (
    select f.tiling, f.encoder, f.dim, f.slide_id, f.n_tiles
    from embedding_files as f
),

slide_patient as (
    select s.slide_id, s.patient_id, s.status
    from slides as s
),

per_set as (
    select
        f.tiling,
        f.encoder,
        max(f.dim) as dim,
        count(distinct coalesce(sp.patient_id, f.slide_id)) as n_patients,
        count(*) as n_slides,
        sum(f.n_tiles)::bigint as n_tiles,
        avg(f.n_tiles) as tiles_per_slide_mean,
        min(f.n_tiles) as tiles_per_slide_min,
        max(f.n_tiles) as tiles_per_slide_max
    from files as f
    left join slide_patient as sp on sp.slide_id = f.slide_id
    group by f.tiling, f.encoder
),

statuses as (
    select
        count(*) as n_slides_in_store,
        count(*) filter (where sp.status = 'ok') as n_slides_ok,
        count(*) filter (where sp.status = 'failed') as n_slides_failed,
        count(*) filter (where sp.status = 'no_tissue') as n_slides_no_tissue,
        count(*) filter (where sp.status = 'too_small') as n_slides_too_small
    from slide_patient as sp
)

select
    p.tiling,
    p.encoder,
    p.dim,
    p.n_patients,
    p.n_slides,
    p.n_tiles,
    p.tiles_per_slide_mean,
    p.tiles_per_slide_min,
    p.tiles_per_slide_max,
    st.n_slides_in_store,
    st.n_slides_ok,
    st.n_slides_failed,
    st.n_slides_no_tissue,
    st.n_slides_too_small
from per_set as p
cross join statuses as st
order by p.tiling, p.encoder;
