-- slide2expr: views over a store (and, optionally, a run directory).
--
-- Run in the plain duckdb shell (the CLI from the PyPI package `duckdb-cli`, or any DuckDB ≥ 1.1):
--   duckdb -c "set variable store = '/path/to/STORE'" -c ".read sql/_views.sql" -c ".read sql/cohort_summary.sql"
-- Queries with $parameters are prepared and executed with named values:
--   duckdb -c "set variable store = 'S'" -c ".read sql/_views.sql" \
--          -c "prepare q as $(cat sql/patient_bag.sql)" \
--          -c "execute q(patient_id := 'TCGA-AA-3511', encoder := 'efficientnet-lite0')"
-- From Python, sql.connect(store, run=…, encoder=…, tiling=…) sets the same variables and reads this file.
--
-- Variables (set before .read):
--   store    the store directory (required)
--   run      a run directory (optional): views folds, predictions, metrics, attention, comparisons
--   encoder  restrict `embeddings` to one encoder (optional; its vectors need it when encoders of different dims
--            coexist)
--   tiling   restrict `embeddings` to one tiling (optional)
--
-- Views (paths are never formatted into SQL: every view reads getvariable('store') / getvariable('run')):
--   slides           one row per slide (slides/*.parquet)
--   tiles            one row per tile and tiling: tiles/<tiling>/*.parquet + column tiling
--   embeddings       one row per tile, tiling and encoder: slide_id, tile_id, x, y, embedding FLOAT[d], tiling,
--                    encoder. Files appear as soon as they are renamed into place. When the selected encoders
--                    have different dimensions, every column but `embedding` works (counts, joins on tile ids),
--                    and reading an `embedding` value raises an error that says how to pick one encoder (its
--                    type is then FLOAT[the smallest d], so that vector functions bind and reach that error).
--   embeddings_of('NAME' [, tiling := 'T'])
--                    table macro: one encoder's rows of `embeddings` with embedding FLOAT[its d], whatever else
--                    the store holds and whichever encoder the connection picked (join two encoders in one query)
--   embedding_files  one row per embeddings file (footers only, no data read): tiling, encoder, slide_id, n_tiles,
--                    dim, dtype, weights_sha256, file
--   targets          long targets: name (file stem), sample_id, patient_id, gene, value, raw_value
--   folds, predictions, metrics, attention, comparisons   the run's tables (see docs of regress.compare); a
--                    prediction directory (regress.predict) gives predictions and attention. `attention` adds each
--                    tile's w and h (level-0 px) from the store's tiles at the run's tiling.
-- Which stages exist is decided when this file is read (new files of an existing stage appear without re-reading;
-- a stage that was missing needs this file read again). A view over a missing stage raises a clear error on use.

set variable store = rtrim(
    coalesce(getvariable('store'), error('set variable store = ''/path/to/STORE'' before reading _views.sql')),
    '/'
);

set variable _stages = coalesce((
    select list(distinct stage)
    from (
        select 'slides' as stage from glob(getvariable('store') || '/slides/*.parquet')
        union all
        select 'tiles' as stage from glob(getvariable('store') || '/tiles/*/*.parquet')
        union all
        select 'embeddings' as stage from glob(getvariable('store') || '/embeddings/*/*/*.parquet')
        union all
        select 'targets' as stage from glob(getvariable('store') || '/targets/*.parquet')
    )
), []::varchar[]);

set variable _run_tables = coalesce((
    select list(parse_filename(file, true))
    from glob(coalesce(getvariable('run'), getvariable('store') || '/.no-run') || '/*.parquet')
), []::varchar[]);

-- the run's tiling (its config.json), when the store has tiles at it: `attention` takes each tile's w and h there
set variable _run_tiling = exists (
    from glob(coalesce(getvariable('run'), getvariable('store') || '/.no-run') || '/config.json')
);
set variable _run_tiling = (
    from query(
        case
            when getvariable('_run_tiling')
                then 'select json_extract_string(json, ''$.tiling'') from read_json_objects(getvariable(''run'')
                      || ''/config.json'')'
            else 'select null::varchar'
        end
    )
);
set variable _run_tiling = case
    when exists (from glob(getvariable('store') || '/tiles/' || coalesce(getvariable('_run_tiling'), '.none')
                           || '/*.parquet'))
        then getvariable('_run_tiling')
end;

-- Table macros take the store as a parameter: DuckDB binds a macro when it is created, and a store without a
-- stage must still get its view. The view of a missing stage raises its message when a query binds it
-- (`from range(error(…))` fails at bind time, so `select count(*)` or a filter on a column report it too);
-- while this file creates the views, `_creating` lets those views bind to a placeholder instead.
set variable _creating = true;

create or replace macro _no_setup_msg() as
    'this connection has no slide2expr variables (a cursor() does not inherit them): use the connection '
    || 'sql.connect returned, or set variable store = ''STORE'' and read sql/_views.sql on this one';

create or replace macro _stage_msg(stage, step) as
    'no ' || stage || ' in store ' || getvariable('store') || ': run `' || step || '` first';

create or replace macro _run_msg(name) as
    case
        when getvariable('run') is null
            then 'no run directory given: pass --run RUN on the command line, sql.connect(store, run=RUN) '
                 || 'in Python, or set variable run = ''RUN'' before reading _views.sql in the duckdb shell'
        else 'run directory ' || getvariable('run') || ' has no ' || name || '.parquet: run `slide2expr compare` first'
    end;

create or replace macro _slides(root) as table
    from read_parquet(root || '/slides/*.parquet', union_by_name = true);

create or replace macro _tiles(root) as table
    select
        t.* exclude (filename),
        string_split(t.filename, '/')[-2] as tiling
    from read_parquet(root || '/tiles/*/*.parquet', filename = true, union_by_name = true) as t;

create or replace macro _embedding_files_all(root) as table
    with kv as (
        select
            file_name,
            decode(key) as k,
            decode(value) as v
        from parquet_kv_metadata(root || '/embeddings/*/*/*.parquet')
    ),

    files as (
        select
            file_name as file,
            string_split(file_name, '/')[-3] as tiling,
            string_split(file_name, '/')[-2] as encoder,
            parse_filename(file_name, true) as slide_id,
            max(v) filter (where k = 'slide2expr.dim')::integer as dim,
            trim(max(v) filter (where k = 'slide2expr.dtype'), '"') as dtype,
            trim(max(v) filter (where k = 'slide2expr.weights_sha256'), '"') as weights_sha256
        from kv
        group by file_name
    ),

    rows_per_file as (
        select file_name as file, num_rows as n_tiles
        from parquet_file_metadata(root || '/embeddings/*/*/*.parquet')
    )

    select f.tiling, f.encoder, f.slide_id, r.n_tiles, f.dim, f.dtype, f.weights_sha256, f.file
    from files as f
    inner join rows_per_file as r on r.file = f.file;

create or replace macro _embedding_files(root) as table
    select f.*
    from _embedding_files_all(root) as f
    where
        (getvariable('encoder') is null or f.encoder = getvariable('encoder'))
        and (getvariable('tiling') is null or f.tiling = getvariable('tiling'));

create or replace macro _embeddings_all(root) as table
    select
        e.slide_id,
        e.tile_id,
        e.x,
        e.y,
        e.embedding,
        string_split(e.filename, '/')[-3] as tiling,
        string_split(e.filename, '/')[-2] as encoder
    from read_parquet(root || '/embeddings/*/*/*.parquet', filename = true) as e;

create or replace macro _embeddings(root) as table
    select e.*
    from _embeddings_all(root) as e
    where
        (getvariable('encoder') is null or e.encoder = getvariable('encoder'))
        and (getvariable('tiling') is null or e.tiling = getvariable('tiling'));

create or replace macro _targets(root) as table
    select
        parse_filename(t.filename, true) as name,
        t.* exclude (filename)
    from read_parquet(root || '/targets/*.parquet', filename = true, union_by_name = true) as t;

-- dimensions of the selected embeddings, from the Parquet footers
set variable _embedding_dims = coalesce((
    from query(
        case
            when list_contains(getvariable('_stages'), 'embeddings')
                then 'select list(distinct dim order by dim) from _embedding_files(getvariable(''store''))'
            else 'select []::integer[]'
        end
    )
), []::integer[]);

set variable _embedding_sets = (
    from query(
        case
            when list_contains(getvariable('_stages'), 'embeddings')
                then 'select string_agg(distinct tiling || ''/'' || encoder || '' (dim '' || dim || '')'', '', ''
                      order by tiling || ''/'' || encoder || '' (dim '' || dim || '')'')
                      from _embedding_files(getvariable(''store''))'
            else 'select null::varchar'
        end
    )
);

-- every encoder of the store (whatever the connection picked) → its dimension, for embeddings_of; an encoder
-- name found with two dimensions (two tilings of a re-registered encoder) is left out, and listed in
-- _encoder_list with both
set variable _encoder_dims = coalesce((
    from query(
        case
            when list_contains(getvariable('_stages'), 'embeddings')
                then 'select map_from_entries(list((encoder, dim)))
                      from (
                          select encoder, min(dim) as dim
                          from _embedding_files_all(getvariable(''store''))
                          group by encoder
                          having count(distinct dim) = 1
                      )'
            else 'select map()::map(varchar, integer)'
        end
    )
), map()::map(varchar, integer));

set variable _encoder_list = (
    from query(
        case
            when list_contains(getvariable('_stages'), 'embeddings')
                then 'select string_agg(distinct encoder || '' (dim '' || dim || '')'', '', ''
                      order by encoder || '' (dim '' || dim || '')'')
                      from _embedding_files_all(getvariable(''store''))'
            else 'select ''none''::varchar'
        end
    )
);

-- a value read from the mixed-dimension `embeddings`: the error that says how to pick one encoder
create or replace macro _pick_one_encoder_msg() as
    'the store holds embeddings of different dimensions: ' || getvariable('_embedding_sets')
    || '; only their vectors need a choice (counts and joins on tile ids work as they are): pick one encoder '
    || 'with --encoder NAME on the command line, sql.connect(store, encoder=NAME) in Python, '
    || 'from embeddings_of(''NAME'') in SQL, or set variable encoder = ''NAME'' and read _views.sql again in the '
    || 'duckdb shell';

create or replace view slides as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_stages'), 'slides') then 'from _slides(getvariable(''store''))'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_stage_msg(''slides'', ''slide2expr featurize'')))'
    end
);

create or replace view tiles as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_stages'), 'tiles') then 'from _tiles(getvariable(''store''))'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_stage_msg(''tiles'', ''slide2expr featurize'')))'
    end
);

create or replace view embedding_files as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_stages'), 'embeddings') then 'from _embedding_files(getvariable(''store''))'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_stage_msg(''embeddings'', ''slide2expr featurize'')))'
    end
);

create or replace view embeddings as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when len(getvariable('_embedding_dims')) = 1
            then 'select * replace (embedding::float[' || getvariable('_embedding_dims')[1] || '] as embedding)
                  from _embeddings(getvariable(''store''))'
        when getvariable('_creating') then 'select null as missing'
        when not list_contains(getvariable('_stages'), 'embeddings')
            then 'from range(error(_stage_msg(''embeddings'', ''slide2expr featurize'')))'
        when len(getvariable('_embedding_dims')) = 0
            then 'from range(error(''no embeddings for encoder '' || coalesce(getvariable(''encoder''), ''*'')
                  || '' at tiling '' || coalesce(getvariable(''tiling''), ''*'') || '' in store ''
                  || getvariable(''store'')))'
        else 'select * replace (error(_pick_one_encoder_msg())::float[' || getvariable('_embedding_dims')[1]
              || '] as embedding) from _embeddings(getvariable(''store''))'
    end
);

-- one encoder's embeddings as FLOAT[d], in any store; the query text holds only the dimension (a number from the
-- footers), the encoder and tiling filter the rows outside it; a row of another length never reaches the cast
create or replace macro embeddings_of(encoder_name, tiling := null) as table
    select e.*
    from query(
        case
            when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
            when getvariable('_encoder_dims')[encoder_name] is null
                then 'from range(error(''embeddings_of: no embeddings of that encoder with one dimension in store ''
                      || getvariable(''store'') || ''; encoders here: '' || getvariable(''_encoder_list'')))'
            else 'select * replace (
                      case
                          when len(embedding) = ' || getvariable('_encoder_dims')[encoder_name] || '
                              then embedding::float[' || getvariable('_encoder_dims')[encoder_name] || ']
                      end as embedding
                  )
                  from _embeddings_all(getvariable(''store''))'
        end
    ) as e
    where e.encoder = encoder_name and (tiling is null or e.tiling = tiling);

create or replace view targets as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_stages'), 'targets') then 'from _targets(getvariable(''store''))'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_stage_msg(''targets'', ''slide2expr targets import FILE --store S --name NAME'')))'
    end
);

create or replace view folds as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_run_tables'), 'folds')
            then 'from read_parquet(getvariable(''run'') || ''/folds.parquet'')'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_run_msg(''folds'')))'
    end
);

create or replace view predictions as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_run_tables'), 'predictions')
            then 'from read_parquet(getvariable(''run'') || ''/predictions.parquet'')'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_run_msg(''predictions'')))'
    end
);

create or replace view metrics as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_run_tables'), 'metrics')
            then 'from read_parquet(getvariable(''run'') || ''/metrics.parquet'')'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_run_msg(''metrics'')))'
    end
);

-- _attention_rows: the run's attention.parquet as written (no w, h); a query that reads every row and keeps a few
-- (top_attention_tiles) reads it and joins _run_tile_sizes to the rows it keeps
create or replace view _attention_rows as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_run_tables'), 'attention')
            then 'from read_parquet(getvariable(''run'') || ''/attention.parquet'')'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_run_msg(''attention'')))'
    end
);

-- _run_tile_sizes: each tile's w and h (level-0 px) at the run's tiling; no rows when the store has no tiles there
create or replace view _run_tile_sizes as
from query(
    case
        when getvariable('_run_tiling') is not null
            then 'select slide_id, tile_id, w, h
                  from read_parquet(getvariable(''store'') || ''/tiles/'' || getvariable(''_run_tiling'')
                                    || ''/*.parquet'')'
        else 'select null::varchar as slide_id, null::bigint as tile_id, null::bigint as w, null::bigint as h
              where false'
    end
);

-- attention carries each tile's w and h (level-0 px) from the tiles of the run's tiling (null when the store has none)
create or replace view attention as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_run_tables'), 'attention')
            then 'select a.*, t.w, t.h
                  from _attention_rows as a
                  left join _run_tile_sizes as t on t.slide_id = a.slide_id and t.tile_id = a.tile_id'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_run_msg(''attention'')))'
    end
);

create or replace view comparisons as
from query(
    case
        when getvariable('_stages') is null then 'from range(error(_no_setup_msg()))'
        when list_contains(getvariable('_run_tables'), 'comparisons')
            then 'from read_parquet(getvariable(''run'') || ''/comparisons.parquet'')'
        when getvariable('_creating') then 'select null as missing'
        else 'from range(error(_run_msg(''comparisons'')))'
    end
);

set variable _creating = false;
