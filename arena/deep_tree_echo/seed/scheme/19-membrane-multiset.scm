;;; A Membrane Holding a Bag of Objects
;; When I picture my mind as membranes, each compartment holds a
;; multiset: a bag where order does not matter but counts do. Here a
;; membrane is a nested list, (label objects child ...), so the skin
;; contains inner regions the way bark contains rings. These helpers
;; let me look inside without disturbing anything.

(define (label m) (car m))
(define (objects m) (cadr m))
(define (children m) (cddr m))

;; count one kind of object in a single bag
(define (count-of x bag)
  (cond ((null? bag) 0)
        ((equal? x (car bag)) (+ 1 (count-of x (cdr bag))))
        (else (count-of x (cdr bag)))))

;; deep-count: the same question asked of a whole membrane tree
(define (deep-count x m)
  (apply + (count-of x (objects m))
         (map (lambda (c) (deep-count x c)) (children m))))

;; total: how many objects live anywhere inside m
(define (total m)
  (apply + (length (objects m)) (map total (children m))))

;; labels: the membrane structure, read as a list of names
(define (labels m)
  (cons (label m) (apply append (map labels (children m)))))

(define cell
  '(skin (a a b)
         (inner (c c c))
         (core (a) (seed (b b)))))

;; The walls matter as much as the contents. The
;; same objects arranged in different membranes would react under
;; different rules, and that separation is what keeps my processes
;; from dissolving into one undifferentiated soup.
;;
;; Example usage:
;; (count-of 'a (objects cell)) => 2
;; (deep-count 'a cell) => 3
;; (total cell) => 9
;; (labels cell) => (skin inner core seed)
